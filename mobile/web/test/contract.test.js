// The shared contract vectors (tests/vectors/contract.json) through the browser bridge's contract.js.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  contractFromJson,
  contractFromOrdered,
  labelsGrammar,
  parseOutput,
  pyJsonLoads,
  pyStrip,
  renderPrompt,
} from "../contract.js";

const VECTORS_TEXT = readFileSync(new URL("../../../tests/vectors/contract.json", import.meta.url), "utf8");
const VECTORS = JSON.parse(VECTORS_TEXT);
// Contracts are read the way the bridge reads edgepack.json: with Python's JSON rules.
const ORDERED = pyJsonLoads(VECTORS_TEXT).get("contracts");

function contract(name) {
  return contractFromOrdered(ORDERED.get(name));
}

for (const [i, c] of VECTORS.render.entries()) {
  test(`render vector ${i} (${c.contract}) gives the Python result`, () => {
    assert.equal(renderPrompt(contract(c.contract), c.input, c.instruction), c.expected);
  });
}

for (const [i, c] of VECTORS.parse.entries()) {
  test(`parse vector ${i} (${c.contract}: ${JSON.stringify(c.raw).slice(0, 30)}) gives the Python result`, () => {
    assert.deepStrictEqual(parseOutput(contract(c.contract), c.raw), c.expected);
  });
}

for (const [i, c] of VECTORS.grammar.entries()) {
  test(`grammar vector ${i} gives the Python result`, () => {
    assert.equal(labelsGrammar(c.labels), c.expected);
  });
}

test("vectors cover every error code", () => {
  const codes = new Set(VECTORS.parse.filter((c) => c.expected.error).map((c) => c.expected.error.code));
  assert.deepStrictEqual([...codes].sort(), ["invalid_json", "schema_mismatch", "unknown_label"]);
});

test("an unknown placeholder in a template is an error, as in Python", () => {
  const c = { prompt: { prefix: "", template: "{nope}", suffix: "" } };
  assert.throws(() => renderPrompt(c, "x"), /unknown placeholder \{nope\}/);
  const inherited = { prompt: { prefix: "", template: "{constructor}", suffix: "" } };
  assert.throws(() => renderPrompt(inherited, "x"), /unknown placeholder/);
});

test("strip uses Python's whitespace, not JavaScript's trim()", () => {
  assert.equal(pyStrip("\u001c a \u0085"), "a"); // Python strips these, trim() does not
  assert.equal(pyStrip("\ufeffa"), "\ufeffa"); // trim() strips the BOM, Python does not
});

test("JSON keeps the document's key order and rejects NaN / Infinity like packager/contract.py", () => {
  const json = { task: "json", json_schema: { additionalProperties: false, properties: {} }, stop_strings: [] };
  const result = parseOutput(json, '{"b": 1, "2": 3}');
  assert.equal(result.ok, false);
  assert.deepStrictEqual(result.error, { code: "schema_mismatch", path: "/b" }); // a JS object would say "/2"
  const any = { task: "json", json_schema: {}, stop_strings: [] };
  assert.deepStrictEqual(parseOutput(any, "-Infinity").error, { code: "invalid_json", path: "" });
  assert.deepStrictEqual(parseOutput(any, '{"a": NaN}').error, { code: "invalid_json", path: "" });
});

test("enum and const compare like Python's == (true == 1)", () => {
  const c = contractFromJson('{"task": "json", "json_schema": {"enum": [1, [1, 2]]}, "stop_strings": []}');
  assert.equal(parseOutput(c, "true").ok, true);
  assert.equal(parseOutput(c, "[1.0, 2]").ok, true);
  assert.equal(parseOutput(c, '"1"').ok, false);
});
