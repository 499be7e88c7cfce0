/**
 * The shared contract vectors (tests/vectors/contract.json), run through src/contract.ts: the same
 * cases packager/contract.py passes, with identical expected results.
 */

import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';

import { contractFromJson, labelsGrammar, parseOutput, renderPrompt } from '../src/contract';

// Beside the repository's tests/ by default; edgepack's pytest run points here explicitly because
// it runs this package from a copy outside the repository.
const VECTORS_PATH =
  process.env.EDGEPACK_CONTRACT_VECTORS ?? resolve(__dirname, '..', '..', '..', 'tests', 'vectors', 'contract.json');

interface Vectors {
  contracts: Record<string, unknown>;
  render: Array<{ contract: string; instruction: string; input: string; expected: string }>;
  parse: Array<{ contract: string; raw: string; expected: unknown }>;
  grammar: Array<{ labels: string[]; expected: string }>;
}

const vectors = JSON.parse(readFileSync(VECTORS_PATH, 'utf8')) as Vectors;
const contract = (name: string) => contractFromJson(vectors.contracts[name]);

test('the vector file has cases of every kind', () => {
  expect(vectors.render.length).toBeGreaterThan(0);
  expect(vectors.parse.length).toBeGreaterThan(0);
  expect(vectors.grammar.length).toBeGreaterThan(0);
});

test.each(vectors.render.map((c) => [`${c.contract}: ${c.input.slice(0, 20)}`, c] as const))(
  'render %s',
  (_name, c) => {
    expect(renderPrompt(contract(c.contract), c.input, c.instruction)).toBe(c.expected);
  },
);

test.each(vectors.parse.map((c) => [`${c.contract}: ${c.raw.slice(0, 24)}`, c] as const))(
  'parse %s',
  (_name, c) => {
    expect(parseOutput(contract(c.contract), c.raw)).toStrictEqual(c.expected);
  },
);

test.each(vectors.grammar.map((c) => [c.labels.join('|').slice(0, 30), c] as const))('grammar %s', (_name, c) => {
  expect(labelsGrammar(c.labels)).toBe(c.expected);
});
