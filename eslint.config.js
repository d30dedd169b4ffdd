// ESLint (flat config): typescript-eslint's recommended rules; formatting is prettier's job (eslint-config-prettier).
const js = require('@eslint/js');
const tseslint = require('typescript-eslint');
const prettier = require('eslint-config-prettier');
const globals = require('globals');

module.exports = tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'coverage/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { ...globals.node } },
    rules: {
      // `_`-prefixed parameters are deliberately unused (express handler arity, callbacks)
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      // validators deliberately match control characters (names, paths, headers)
      'no-control-regex': 'off',
      // `let [a, b] = …` where only one is reassigned stays one statement
      'prefer-const': ['error', { destructuring: 'all' }],
    },
  },
  {
    // CommonJS helpers and configs; tests and the bench load some helpers lazily
    files: ['**/*.js', 'tests/**', 'bench/**'],
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
  {
    // tests read arbitrary JSON bodies, and isolation walks ComfyUI's untyped prompt/object_info JSON
    files: ['tests/**', 'bench/**', 'gateway/proxy/isolation/**'],
    rules: { '@typescript-eslint/no-explicit-any': 'off' },
  },
  // the pages' scripts share one global namespace object from common.js
  { files: ['public/**/*.js'], languageOptions: { globals: { ...globals.browser, GW: 'writable' }, sourceType: 'script' } },
  prettier,
);
