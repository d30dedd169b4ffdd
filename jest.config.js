/** Jest: TypeScript via ts-jest (transpile only; `tsc` type-checks in `npm test`). Heavy suites: jest.heavy.config.js. */
const { base, HEAVY } = require('./tests/config/jest.base.js');

module.exports = {
  ...base,
  testMatch: ['**/*.test.ts'],
  testPathIgnorePatterns: ['/node_modules/', '/tests/comfyui/', ...HEAVY],
  maxWorkers: 2,
};
