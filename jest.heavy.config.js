/** The heavy streaming suites alone, one worker (`npm test` runs them after the others). */
const { base, HEAVY } = require('./tests/config/jest.base.js');

module.exports = { ...base, testRegex: HEAVY, maxWorkers: 1 };
