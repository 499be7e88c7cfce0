// llama.rn's own mock (llama.rn/jest/mock, set up in the tests) replaces only its native layer and
// runs llama.rn's TypeScript sources, so llama.rn is transformed like react-native itself.
module.exports = {
  preset: 'react-native',
  // The first run transforms react-native's own sources, which takes seconds on a small machine.
  testTimeout: 60000,
  testMatch: ['<rootDir>/__tests__/**/*.test.ts?(x)'],
  transformIgnorePatterns: [
    'node_modules/(?!((jest-)?react-native|@react-native(-community)?|llama\\.rn|react-native-blob-util)/)',
  ],
};
