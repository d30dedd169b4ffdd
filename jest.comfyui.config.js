/** Jest for the real-ComfyUI conformance suite (`npm run test:comfyui`); `npm test` never runs these files. */
const base = require('./jest.config.js');

module.exports = {
  ...base,
  testMatch: ['**/tests/comfyui/**/*.real.test.ts'],
  testPathIgnorePatterns: ['/node_modules/'],
  globalSetup: '<rootDir>/tests/comfyui/globalSetup.ts',
  testTimeout: 180000,
  maxWorkers: 1,
};
