/** Jest: TypeScript via ts-jest (transpile only; `tsc --noEmit` type-checks in `npm test`). */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/tests'],
  testMatch: ['**/*.test.ts'],
  // the real-ComfyUI conformance suite runs only through `npm run test:comfyui` (jest.comfyui.config.js)
  testPathIgnorePatterns: ['/node_modules/', '/tests/comfyui/'],
  transform: {
    '^.+\\.[tj]s$': ['ts-jest', { tsconfig: { isolatedModules: true, allowJs: true, module: 'commonjs', target: 'ES2022', esModuleInterop: true } }],
  },
  // lowdb ships ESM only; jest's CommonJS runtime needs it transpiled.
  transformIgnorePatterns: ['/node_modules/(?!(lowdb|steno)/)'],
  testTimeout: 30000,
  maxWorkers: 2,
};
