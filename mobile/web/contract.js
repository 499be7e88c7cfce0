// The task contract in the browser: a line-by-line port of packager/contract.py.
//
// Every function here must give exactly what its Python twin gives; tests/vectors/contract.json
// (run by `node --test mobile/web/test/`) and a differential test against Python prove it.
// Where JavaScript and Python disagree on a primitive, the Python behaviour is rebuilt here:
//   - str.strip() strips Python's whitespace set (JS trim() differs: U+FEFF vs U+001C-001F, U+0085);
//   - json.loads keeps object keys in document order (a JS object moves integer-like keys first,
//     which would change which key is reported); NaN / Infinity are rejected as in RFC 8259
//     (packager/contract.py passes parse_constant to reject them too);
//   - == treats True as 1 and compares containers structurally (used by enum and const).

// ---------------------------------------------------------------------------------------------
// Rendering and parsing (mirrors packager/contract.py, same order, same names in camelCase).

/** Replace {name} placeholders; `{{` and `}}` are literal braces; unknown names are an error. */
export function fillTemplate(template, values) {
  const known = new Map(Object.entries(values));
  const out = [];
  let i = 0;
  while (i < template.length) {
    const ch = template[i];
    if (ch === "{" && template.startsWith("{{", i)) {
      out.push("{");
      i += 2;
    } else if (ch === "}" && template.startsWith("}}", i)) {
      out.push("}");
      i += 2;
    } else if (ch === "{") {
      const end = template.indexOf("}", i);
      if (end < 0) {
        throw new Error(`unclosed placeholder at ${i} in prompt template`);
      }
      const name = template.slice(i + 1, end);
      if (!known.has(name)) {
        throw new Error(`unknown placeholder {${name}} in prompt template`);
      }
      out.push(known.get(name));
      i = end + 1;
    } else {
      out.push(ch);
      i += 1;
    }
  }
  return out.join("");
}

/** Return the exact text the model sees (BOS is not included: the runtime adds it if add_bos). */
export function renderPrompt(contract, inputText, instruction = "") {
  const prompt = contract.prompt;
  const body = fillTemplate(prompt.template, { input: inputText, instruction });
  return prompt.prefix + body + prompt.suffix;
}

/** Cut the raw generation at the first stop string, then strip surrounding whitespace. */
export function cleanOutput(contract, raw) {
  let cut = raw.length;
  for (const stop of contract.stop_strings ?? []) {
    const pos = raw.indexOf(stop);
    if (pos >= 0 && pos < cut) {
      cut = pos;
    }
  }
  return pyStrip(raw.slice(0, cut));
}

/** Return {ok, value, error, text}; error is null or {code, path}. Nothing is repaired. */
export function parseOutput(contract, raw) {
  const text = cleanOutput(contract, raw);
  if (contract.task === "labels") {
    if ((contract.labels ?? []).includes(text)) {
      return { ok: true, value: text, error: null, text };
    }
    return { ok: false, value: null, error: { code: "unknown_label", path: "" }, text };
  }
  if (contract.task === "json") {
    let value;
    try {
      value = pyJsonLoads(text);
    } catch (err) {
      if (!(err instanceof JsonDecodeError)) throw err;
      return { ok: false, value: null, error: { code: "invalid_json", path: "" }, text };
    }
    const path = schemaViolation(value, toPy(contract.json_schema ?? {}), "");
    if (path !== null) {
      return { ok: false, value: toPlain(value), error: { code: "schema_mismatch", path }, text };
    }
    return { ok: true, value: toPlain(value), error: null, text };
  }
  return { ok: true, value: text, error: null, text };
}

function jsonType(value) {
  if (value === null) return "null";
  if (typeof value === "boolean") return "boolean";
  if (value instanceof PyNumber) {
    if (value.isInt) return "integer";
    return Number.isFinite(value.value) && Number.isInteger(value.value) ? "integer" : "number";
  }
  if (typeof value === "string") return "string";
  if (Array.isArray(value)) return "array";
  return "object";
}

function typeMatches(value, expected) {
  const actual = jsonType(value);
  const allowed = Array.isArray(expected) ? expected : [expected];
  return allowed.some((t) => pyEquals(actual, t)) || (actual === "integer" && allowed.some((t) => pyEquals("number", t)));
}

/**
 * Return the JSON pointer of the first violation of a JSON-schema subset, or null.
 *
 * Both arguments are in the Python-faithful form pyJsonLoads / toPy produce (objects are Maps).
 * Order of checks (shared by every bridge): type, const, enum, then for objects required (in
 * schema order), properties (schema order), additional keys (value order); for arrays the length
 * bounds, then items in order.
 */
export function schemaViolation(value, schema, path) {
  if (schema.has("type") && !typeMatches(value, schema.get("type"))) {
    return path;
  }
  if (schema.has("const") && !pyEquals(value, schema.get("const"))) {
    return path;
  }
  if (schema.has("enum") && !pyContains(schema.get("enum"), value)) {
    return path;
  }
  if (value instanceof Map) {
    const props = schema.has("properties") ? schema.get("properties") : new Map();
    for (const key of schema.has("required") ? schema.get("required") : []) {
      if (!value.has(key)) {
        return `${path}/${pyStr(key)}`;
      }
    }
    for (const [key, sub] of props) {
      if (value.has(key)) {
        const found = schemaViolation(value.get(key), sub, `${path}/${key}`);
        if (found !== null) {
          return found;
        }
      }
    }
    if (schema.get("additionalProperties") === false) {
      for (const key of value.keys()) {
        if (!props.has(key)) {
          return `${path}/${key}`;
        }
      }
    }
  }
  if (Array.isArray(value)) {
    const minItems = schema.has("minItems") ? numberOf(schema.get("minItems")) : 0;
    const maxItems = schema.has("maxItems") ? numberOf(schema.get("maxItems")) : value.length;
    if (value.length < minItems || value.length > maxItems) {
      return path;
    }
    if (schema.has("items")) {
      for (let i = 0; i < value.length; i++) {
        const found = schemaViolation(value[i], schema.get("items"), `${path}/${i}`);
        if (found !== null) {
          return found;
        }
      }
    }
  }
  return null;
}

/** A GBNF string literal: backslash, quote and control characters escaped. */
export function gbnfLiteral(text) {
  let escaped = text.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n").replaceAll("\r", "\\r");
  escaped = escaped.replaceAll("\t", "\\t");
  return `"${escaped}"`;
}

/** GBNF grammar that admits exactly one of the labels (for llama.cpp-based runtimes). */
export function labelsGrammar(labels) {
  return 'root ::= " "? (' + labels.map((label) => gbnfLiteral(label)).join(" | ") + ")\n";
}

// ---------------------------------------------------------------------------------------------
// Python primitives the functions above rely on.

// str.isspace() characters (all in the BMP, so UTF-16 code units are code points here).
const PY_WHITESPACE = new Set(
  "\t\n\v\f\r\u001c\u001d\u001e\u001f \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008" +
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000",
);

/** Python's str.strip() with no arguments. */
export function pyStrip(text) {
  let start = 0;
  let end = text.length;
  while (start < end && PY_WHITESPACE.has(text[start])) start++;
  while (end > start && PY_WHITESPACE.has(text[end - 1])) end--;
  return text.slice(start, end);
}

/** A JSON number as Python's json module reads it: int when written without fraction or exponent. */
export class PyNumber {
  constructor(value, isInt) {
    this.value = value;
    this.isInt = isInt;
  }
}

export class JsonDecodeError extends Error {}

/** Python's str() of a JSON value, for the rare non-string key in a schema's "required" list. */
function pyStr(value) {
  if (typeof value === "string") return value;
  if (value === null) return "None";
  if (typeof value === "boolean") return value ? "True" : "False";
  if (value instanceof PyNumber) {
    if (value.isInt) return String(value.value);
    if (Number.isNaN(value.value)) return "nan";
    if (!Number.isFinite(value.value)) return value.value > 0 ? "inf" : "-inf";
    return Number.isInteger(value.value) ? `${value.value}.0` : String(value.value);
  }
  return String(value);
}

function numberOf(value) {
  if (value instanceof PyNumber) return value.value;
  if (typeof value === "boolean") return value ? 1 : 0;
  return value;
}

/** Python's == on JSON values: True == 1 == 1.0, dicts compare as sets of pairs, lists in order. */
export function pyEquals(a, b) {
  const numeric = (x) => x instanceof PyNumber || typeof x === "boolean";
  if (numeric(a) && numeric(b)) return numberOf(a) === numberOf(b);
  if (numeric(a) || numeric(b)) return false;
  if (a === null || b === null) return a === b;
  if (typeof a === "string" || typeof b === "string") return a === b;
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((item, i) => pyEquals(item, b[i]));
  }
  if (a instanceof Map && b instanceof Map) {
    if (a.size !== b.size) return false;
    for (const [key, item] of a) {
      if (!b.has(key) || !pyEquals(item, b.get(key))) return false;
    }
    return true;
  }
  return false;
}

function pyContains(list, value) {
  return Array.isArray(list) && list.some((item) => pyEquals(item, value));
}

/** Convert a plain JS value (e.g. from JSON.parse) to the Python-faithful form. */
export function toPy(value) {
  if (value === null || typeof value === "boolean" || typeof value === "string") return value;
  if (value instanceof PyNumber || value instanceof Map) return value;
  if (typeof value === "number") return new PyNumber(value, Number.isInteger(value));
  if (Array.isArray(value)) return value.map(toPy);
  return new Map(Object.entries(value).map(([k, v]) => [k, toPy(v)]));
}

/** Convert the Python-faithful form back to plain JS values (objects keep no prototype tricks). */
export function toPlain(value) {
  if (value instanceof PyNumber) return value.value;
  if (Array.isArray(value)) return value.map(toPlain);
  if (value instanceof Map) {
    const out = {};
    for (const [key, item] of value) {
      // defineProperty, so a "__proto__" key is data and never a prototype change.
      Object.defineProperty(out, key, { value: toPlain(item), enumerable: true, writable: true, configurable: true });
    }
    return out;
  }
  return value;
}

const JSON_WS = new Set([" ", "\t", "\n", "\r"]);
const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/y;
const ESCAPES = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };

/** Python's json.loads(text) (CPython's C scanner rules), returning the Python-faithful form. */
export function pyJsonLoads(text) {
  let pos = skipWs(text, 0);
  const [value, end] = scanValue(text, pos);
  pos = skipWs(text, end);
  if (pos !== text.length) {
    throw new JsonDecodeError(`Extra data at ${pos}`);
  }
  return value;
}

function skipWs(s, pos) {
  while (pos < s.length && JSON_WS.has(s[pos])) pos++;
  return pos;
}

function scanValue(s, pos) {
  if (pos >= s.length) throw new JsonDecodeError(`Expecting value at ${pos}`);
  const ch = s[pos];
  if (ch === '"') return scanString(s, pos + 1);
  if (ch === "{") return scanObject(s, pos + 1);
  if (ch === "[") return scanArray(s, pos + 1);
  if (s.startsWith("null", pos)) return [null, pos + 4];
  if (s.startsWith("true", pos)) return [true, pos + 4];
  if (s.startsWith("false", pos)) return [false, pos + 5];
  if (s.startsWith("NaN", pos) || s.startsWith("Infinity", pos) || s.startsWith("-Infinity", pos)) {
    throw new JsonDecodeError(`NaN and Infinity are not JSON (at ${pos})`);
  }
  NUMBER.lastIndex = pos;
  const match = NUMBER.exec(s);
  if (match !== null) {
    const isInt = match[1] === undefined && match[2] === undefined;
    return [new PyNumber(Number(match[0]), isInt), pos + match[0].length];
  }
  throw new JsonDecodeError(`Expecting value at ${pos}`);
}

function scanString(s, pos) {
  const out = [];
  while (true) {
    if (pos >= s.length) throw new JsonDecodeError("Unterminated string");
    const ch = s[pos];
    if (ch === '"') return [out.join(""), pos + 1];
    if (ch === "\\") {
      const esc = s[pos + 1];
      if (esc === "u") {
        const hex = s.slice(pos + 2, pos + 6);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) throw new JsonDecodeError(`Invalid \\uXXXX escape at ${pos}`);
        out.push(String.fromCharCode(parseInt(hex, 16)));
        pos += 6;
      } else if (esc !== undefined && Object.hasOwn(ESCAPES, esc)) {
        out.push(ESCAPES[esc]);
        pos += 2;
      } else {
        throw new JsonDecodeError(`Invalid \\escape at ${pos}`);
      }
    } else if (ch < " ") {
      throw new JsonDecodeError(`Invalid control character at ${pos}`);
    } else {
      out.push(ch);
      pos += 1;
    }
  }
}

function scanObject(s, pos) {
  const out = new Map();
  pos = skipWs(s, pos);
  if (s[pos] === "}") return [out, pos + 1];
  while (true) {
    if (s[pos] !== '"') throw new JsonDecodeError(`Expecting property name enclosed in double quotes at ${pos}`);
    const [key, afterKey] = scanString(s, pos + 1);
    pos = skipWs(s, afterKey);
    if (s[pos] !== ":") throw new JsonDecodeError(`Expecting ':' delimiter at ${pos}`);
    pos = skipWs(s, pos + 1);
    const [value, afterValue] = scanValue(s, pos);
    out.set(key, value); // a repeated key keeps its first position and takes the last value, as in a dict
    pos = skipWs(s, afterValue);
    if (s[pos] === "}") return [out, pos + 1];
    if (s[pos] !== ",") throw new JsonDecodeError(`Expecting ',' delimiter at ${pos}`);
    pos = skipWs(s, pos + 1);
  }
}

function scanArray(s, pos) {
  const out = [];
  pos = skipWs(s, pos);
  if (s[pos] === "]") return [out, pos + 1];
  while (true) {
    const [value, afterValue] = scanValue(s, pos);
    out.push(value);
    pos = skipWs(s, afterValue);
    if (s[pos] === "]") return [out, pos + 1];
    if (s[pos] !== ",") throw new JsonDecodeError(`Expecting ',' delimiter at ${pos}`);
    pos = skipWs(s, pos + 1);
  }
}

/** Read a contract object from JSON text with Python's JSON rules (schema key order preserved). */
export function contractFromJson(text) {
  return contractFromOrdered(pyJsonLoads(text));
}

/** The contract as the functions above take it, from its Python-faithful (Map) form. */
export function contractFromOrdered(data) {
  const contract = toPlain(data);
  if (data.has("json_schema") && data.get("json_schema") !== null) {
    contract.json_schema = data.get("json_schema"); // keep the ordered form for schemaViolation
  }
  return contract;
}
