/** Shared jest settings for jest.config.js (the main run) and jest.heavy.config.js (heavy suites, one at a time). */
module.exports = {
  base: {
    testEnvironment: 'node',
    rootDir: require('node:path').resolve(__dirname, '..', '..'),
    roots: ['<rootDir>/tests'],
    transform: {
      '^.+\\.[tj]s$': [
        'ts-jest',
        { tsconfig: { isolatedModules: true, allowJs: true, module: 'commonjs', target: 'ES2022', esModuleInterop: true } },
      ],
    },
    // lowdb ships ESM only; jest's CommonJS runtime needs it transpiled.
    transformIgnorePatterns: ['/node_modules/(?!(lowdb|steno)/)'],
    testTimeout: 30000,
  },
  /**
   * Suites that measure a child process's memory while streaming hundreds of MB: they run after the others, one
   * at a time, so a parallel browser suite cannot starve them.
   */
  HEAVY: ['/tests/foundation-stream\\.test\\.ts$'],
};
