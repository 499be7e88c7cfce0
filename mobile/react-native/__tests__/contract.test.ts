/**
 * Where JavaScript's primitives differ from Python's, the port must still answer like
 * packager/contract.py. Expected values here were checked against the Python implementation.
 */

import {
  cleanOutput,
  contractFromJson,
  fillTemplate,
  parseOutput,
  pyEqual,
  pyStrip,
  schemaViolation,
  type Contract,
} from '../src/contract';

const base = (overrides: Record<string, unknown>): Contract => contractFromJson(overrides);

test('strip removes exactly what Python str.strip() removes', () => {
  // U+001C..U+001F and U+0085 are whitespace to Python (JS trim() keeps them); U+FEFF is not (trim() drops it).
  expect(pyStrip('\u001c\u001f\u0085 x \u3000\u2028')).toBe('x');
  expect(pyStrip('\ufeffx\ufeff')).toBe('\ufeffx\ufeff');
  expect(cleanOutput(base({}), '\u0085billing\u001e')).toBe('billing');
});

test('a byte-order mark before JSON is invalid JSON, as in Python', () => {
  const contract = base({ task: 'json', json_schema: {} });
  expect(parseOutput(contract, '\ufeff{}').error).toEqual({ code: 'invalid_json', path: '' });
});

test('const and enum compare like Python ==: true == 1 and 1 == 1.0', () => {
  expect(pyEqual(true, 1)).toBe(true);
  expect(pyEqual(false, 0)).toBe(true);
  expect(pyEqual('1', 1)).toBe(false);
  expect(pyEqual({ a: [1, true] }, { a: [1.0, 1] })).toBe(true);
  expect(pyEqual({ a: 1 }, { b: 1 })).toBe(false);
  expect(schemaViolation(true, { enum: [1, 2] }, '')).toBeNull();
  expect(schemaViolation(1, { const: true }, '')).toBeNull();
  expect(schemaViolation('1', { enum: [1] }, '')).toBe('');
});

test('only own keys count: "toString" and "constructor" are ordinary names', () => {
  expect(schemaViolation({}, { required: ['toString'] }, '')).toBe('/toString');
  expect(schemaViolation({ constructor: 1 }, { properties: {}, additionalProperties: false }, '')).toBe('/constructor');
  expect(schemaViolation(5, {}, '')).toBeNull();
});

test('booleans are not integers and 2.0 is an integer, as _json_type says', () => {
  expect(schemaViolation(true, { type: 'integer' }, '')).toBe('');
  expect(schemaViolation(2.0, { type: 'integer' }, '')).toBeNull();
  expect(schemaViolation(2, { type: 'number' }, '')).toBeNull();
  expect(schemaViolation(2.5, { type: ['integer', 'null'] }, '')).toBe('');
  expect(schemaViolation(null, { type: ['integer', 'null'] }, '')).toBeNull();
});

test('template errors carry Python\'s messages and code-point positions', () => {
  expect(() => fillTemplate('🦙 {input', { input: 'x' })).toThrow('unclosed placeholder at 2 in prompt template');
  expect(() => fillTemplate('{other}', { input: 'x' })).toThrow('unknown placeholder {other} in prompt template');
  expect(() => fillTemplate('{toString}', { input: 'x' })).toThrow('unknown placeholder {toString}');
});

test('an empty stop string cuts everything, as str.find("") == 0 does', () => {
  expect(cleanOutput(base({ stop_strings: [''] }), 'abc')).toBe('');
});

test('the contract reader fills Contract defaults and names a wrong field', () => {
  const contract = contractFromJson({ task: 'labels', labels: ['a'] });
  expect(contract.prompt).toEqual({ prefix: '', template: '{input}', suffix: '', source: 'plain' });
  expect(contract.max_new_tokens).toBe(128);
  expect(contract.add_bos).toBe(true);
  expect(() => contractFromJson({ labels: 'a' })).toThrow('contract field "labels" must be a list of strings or null');
  expect(() => contractFromJson({ surprise: 1 })).toThrow('unknown contract field "surprise"');
  expect(() => contractFromJson({ prompt: { template: 3 } })).toThrow('prompt field "template" must be a string');
});

test('NaN and Infinity are not JSON: invalid_json (packager/contract.py must reject them too)', () => {
  // Python's json.loads accepts these three constants by default; JSON.parse, and JSON, do not.
  const contract = base({ task: 'json', json_schema: { type: 'number' } });
  for (const raw of ['NaN', 'Infinity', '-Infinity']) {
    expect(parseOutput(contract, raw).error).toEqual({ code: 'invalid_json', path: '' });
  }
});
