/* Lets a plain `node` child process run the gateway's TypeScript sources directly (tests spawn the users CLI and
 * the store write storm this way): `node -r ./tests/helpers/tsRequire.js gateway/users/cli.ts ...`.
 * Transpile only, like ts-jest here; `tsc --noEmit` does the type checking. */
const fs = require('node:fs');
const ts = require('typescript');

require.extensions['.ts'] = function compileTs(module, filename) {
  const out = ts.transpileModule(fs.readFileSync(filename, 'utf8'), {
    fileName: filename,
    compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true, sourceMap: false },
  });
  module._compile(out.outputText, filename);
};
