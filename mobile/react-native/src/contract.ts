/**
 * The task contract, ported line by line from packager/contract.py.
 *
 * Every bridge renders prompts and reads answers exactly like the Python reference, so what was
 * verified at build time is what runs on the phone. tests/vectors/contract.json is the shared proof.
 * Where JavaScript and Python disagree on a primitive (whitespace in strip(), `in` on objects,
 * equality of true and 1) a helper below reproduces Python's behaviour.
 */

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

export const TASKS = ['text', 'labels', 'json'] as const;

/** prefix + template (with {instruction} and {input} filled in) + suffix. */
export interface PromptFormat {
  prefix: string;
  template: string;
  suffix: string;
  /** "chat_template" when prefix/suffix come from the model's chat template, else "plain". */
  source: string;
}

/** What a caller needs to drive the model the way it was fine-tuned (fields as in edgepack.json). */
export interface Contract {
  task: string;
  labels: string[] | null;
  json_schema: JsonObject | null;
  prompt: PromptFormat;
  add_bos: boolean;
  bos_id: number | null;
  bos_token: string | null;
  eos_ids: number[];
  stop_strings: string[];
  chat_template: string | null;
  max_new_tokens: number;
  constrained: boolean;
  generation: JsonObject;
}

export interface ParseError {
  code: 'unknown_label' | 'invalid_json' | 'schema_mismatch';
  path: string;
}

/** {ok, value, error, text}: the same four keys, in the same meaning, as parse_output() in Python. */
export interface ParseResult {
  ok: boolean;
  value: JsonValue;
  error: ParseError | null;
  text: string;
}

export class ContractFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ContractFormatError';
  }
}

// ---------------------------------------------------------------------------------------------
// Python semantics the port relies on.

// Exactly the characters for which Python's str.isspace() is true, i.e. what str.strip() removes.
// JavaScript's trim() differs: it keeps U+001C..U+001F and U+0085 and removes U+FEFF.
const PY_WHITESPACE = new Set([
  0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001,
  0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f,
  0x205f, 0x3000,
]);

/** Return text without leading and trailing whitespace, as Python's str.strip() defines it. */
export function pyStrip(text: string): string {
  let start = 0;
  let end = text.length;
  while (start < end && PY_WHITESPACE.has(text.charCodeAt(start))) start += 1;
  while (end > start && PY_WHITESPACE.has(text.charCodeAt(end - 1))) end -= 1;
  return text.slice(start, end);
}

function hasKey(obj: object, key: string): boolean {
  // Python's `key in dict` sees only the dict's own keys; JavaScript's `in` also sees "toString".
  return Object.prototype.hasOwnProperty.call(obj, key);
}

function isObject(value: unknown): value is JsonObject {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** Python's == on values parsed from JSON: True == 1, 1 == 1.0, dicts by keys and values. */
export function pyEqual(a: JsonValue, b: JsonValue): boolean {
  const numeric = (v: JsonValue) => typeof v === 'number' || typeof v === 'boolean';
  if (numeric(a) && numeric(b)) return Number(a) === Number(b);
  if (a === null || b === null) return a === b;
  if (typeof a === 'string' || typeof b === 'string') return a === b;
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((item, i) => pyEqual(item, b[i] as JsonValue));
  }
  if (isObject(a) && isObject(b)) {
    const keys = Object.keys(a);
    if (keys.length !== Object.keys(b).length) return false;
    return keys.every((key) => hasKey(b, key) && pyEqual(a[key] as JsonValue, b[key] as JsonValue));
  }
  return false;
}

function codePointIndex(text: string, utf16Index: number): number {
  // Python indexes strings by code point; error messages quote Python's index.
  return Array.from(text.slice(0, utf16Index)).length;
}

// ---------------------------------------------------------------------------------------------
// Rendering and parsing: mirrors of packager/contract.py (keep them simple and explicit).

/** Replace {name} placeholders; `{{` and `}}` are literal braces; unknown names are an error. */
export function fillTemplate(template: string, values: Record<string, string>): string {
  const out: string[] = [];
  let i = 0;
  while (i < template.length) {
    const ch = template[i];
    if (ch === '{' && template.startsWith('{{', i)) {
      out.push('{');
      i += 2;
    } else if (ch === '}' && template.startsWith('}}', i)) {
      out.push('}');
      i += 2;
    } else if (ch === '{') {
      const end = template.indexOf('}', i);
      if (end < 0) {
        throw new ContractFormatError(`unclosed placeholder at ${codePointIndex(template, i)} in prompt template`);
      }
      const name = template.slice(i + 1, end);
      if (!hasKey(values, name)) {
        throw new ContractFormatError(`unknown placeholder {${name}} in prompt template`);
      }
      out.push(values[name] as string);
      i = end + 1;
    } else {
      out.push(ch as string);
      i += 1;
    }
  }
  return out.join('');
}

/** Return the exact text the model sees (BOS is not included: the runtime adds it if add_bos). */
export function renderPrompt(contract: Contract, inputText: string, instruction = ''): string {
  const body = fillTemplate(contract.prompt.template, { input: inputText, instruction });
  return contract.prompt.prefix + body + contract.prompt.suffix;
}

/** Cut the raw generation at the first stop string, then strip surrounding whitespace. */
export function cleanOutput(contract: Contract, raw: string): string {
  let cut = raw.length;
  for (const stop of contract.stop_strings) {
    const pos = raw.indexOf(stop);
    if (pos >= 0 && pos < cut) {
      cut = pos;
    }
  }
  return pyStrip(raw.slice(0, cut));
}

/** Return {ok, value, error, text}; error is null or {code, path}. Nothing is repaired. */
export function parseOutput(contract: Contract, raw: string): ParseResult {
  const text = cleanOutput(contract, raw);
  if (contract.task === 'labels') {
    if ((contract.labels ?? []).includes(text)) {
      return { ok: true, value: text, error: null, text };
    }
    return { ok: false, value: null, error: { code: 'unknown_label', path: '' }, text };
  }
  if (contract.task === 'json') {
    let value: JsonValue;
    try {
      value = JSON.parse(text) as JsonValue;
    } catch {
      return { ok: false, value: null, error: { code: 'invalid_json', path: '' }, text };
    }
    const path = schemaViolation(value, contract.json_schema ?? {}, '');
    if (path !== null) {
      return { ok: false, value, error: { code: 'schema_mismatch', path }, text };
    }
    return { ok: true, value, error: null, text };
  }
  return { ok: true, value: text, error: null, text };
}

function jsonType(value: JsonValue): string {
  if (value === null) return 'null';
  if (typeof value === 'boolean') return 'boolean';
  if (typeof value === 'number') return Number.isInteger(value) ? 'integer' : 'number';
  if (typeof value === 'string') return 'string';
  if (Array.isArray(value)) return 'array';
  return 'object';
}

function typeMatches(value: JsonValue, expected: JsonValue): boolean {
  const actual = jsonType(value);
  const allowed: JsonValue[] = Array.isArray(expected) ? expected : [expected];
  return allowed.includes(actual) || (actual === 'integer' && allowed.includes('number'));
}

function pyContains(container: JsonValue, value: JsonValue): boolean {
  if (!Array.isArray(container)) {
    throw new ContractFormatError('JSON schema: "enum" must be an array');
  }
  return container.some((item) => pyEqual(item, value));
}

function numberOr(schema: JsonObject, key: string, fallback: number): number {
  const found = hasKey(schema, key) ? schema[key] : fallback;
  if (typeof found !== 'number') {
    throw new ContractFormatError(`JSON schema: "${key}" must be a number`);
  }
  return found;
}

/**
 * Return the JSON pointer of the first violation of a JSON-schema subset, or null.
 *
 * Supported: type, enum, const, properties, required, additionalProperties (false), items,
 * minItems, maxItems. Order of checks (shared by every bridge): type, const, enum, then for
 * objects required (in schema order), properties (schema order), additional keys (value order);
 * for arrays the length bounds, then items in order.
 */
export function schemaViolation(value: JsonValue, schema: JsonObject, path: string): string | null {
  if (hasKey(schema, 'type') && !typeMatches(value, schema.type as JsonValue)) {
    return path;
  }
  if (hasKey(schema, 'const') && !pyEqual(value, schema.const as JsonValue)) {
    return path;
  }
  if (hasKey(schema, 'enum') && !pyContains(schema.enum as JsonValue, value)) {
    return path;
  }
  if (isObject(value)) {
    const props = (hasKey(schema, 'properties') ? schema.properties : {}) as JsonObject;
    for (const key of (hasKey(schema, 'required') ? schema.required : []) as string[]) {
      if (!hasKey(value, key)) {
        return `${path}/${key}`;
      }
    }
    for (const [key, sub] of Object.entries(props)) {
      if (hasKey(value, key)) {
        const found = schemaViolation(value[key] as JsonValue, sub as JsonObject, `${path}/${key}`);
        if (found !== null) {
          return found;
        }
      }
    }
    if (hasKey(schema, 'additionalProperties') && schema.additionalProperties === false) {
      for (const key of Object.keys(value)) {
        if (!hasKey(props, key)) {
          return `${path}/${key}`;
        }
      }
    }
  }
  if (Array.isArray(value)) {
    if (value.length < numberOr(schema, 'minItems', 0) || value.length > numberOr(schema, 'maxItems', value.length)) {
      return path;
    }
    if (hasKey(schema, 'items')) {
      for (let i = 0; i < value.length; i += 1) {
        const found = schemaViolation(value[i] as JsonValue, schema.items as JsonObject, `${path}/${i}`);
        if (found !== null) {
          return found;
        }
      }
    }
  }
  return null;
}

/** A GBNF string literal: backslash, quote and control characters escaped. */
export function gbnfLiteral(text: string): string {
  let escaped = text.replaceAll('\\', '\\\\').replaceAll('"', '\\"').replaceAll('\n', '\\n').replaceAll('\r', '\\r');
  escaped = escaped.replaceAll('\t', '\\t');
  return `"${escaped}"`;
}

/** GBNF grammar that admits exactly one of the labels (for llama.cpp-based runtimes). */
export function labelsGrammar(labels: string[]): string {
  return 'root ::= " "? (' + labels.map((label) => gbnfLiteral(label)).join(' | ') + ')\n';
}

// ---------------------------------------------------------------------------------------------
// Reading the contract from edgepack.json: Contract.from_dict, with types checked because a
// phone has no better place to report a damaged file than here.

const PROMPT_DEFAULTS: PromptFormat = { prefix: '', template: '{input}', suffix: '', source: 'plain' };

function contractDefaults(): Contract {
  return {
    task: 'text',
    labels: null,
    json_schema: null,
    prompt: { ...PROMPT_DEFAULTS },
    add_bos: true,
    bos_id: null,
    bos_token: null,
    eos_ids: [],
    stop_strings: [],
    chat_template: null,
    max_new_tokens: 128,
    constrained: false,
    generation: {},
  };
}

type Check = (value: unknown) => boolean;
const isString: Check = (v) => typeof v === 'string';
const isInt: Check = (v) => typeof v === 'number' && Number.isInteger(v);
const orNull = (check: Check): Check => (v) => v === null || check(v);
const listOf = (check: Check): Check => (v) => Array.isArray(v) && v.every(check);

const FIELD_CHECKS: Record<keyof Contract, [Check, string]> = {
  task: [isString, 'a string'],
  labels: [orNull(listOf(isString)), 'a list of strings or null'],
  json_schema: [orNull(isObject), 'an object or null'],
  prompt: [isObject, 'an object'],
  add_bos: [(v) => typeof v === 'boolean', 'true or false'],
  bos_id: [orNull(isInt), 'an integer or null'],
  bos_token: [orNull(isString), 'a string or null'],
  eos_ids: [listOf(isInt), 'a list of integers'],
  stop_strings: [listOf(isString), 'a list of strings'],
  chat_template: [orNull(isString), 'a string or null'],
  max_new_tokens: [isInt, 'an integer'],
  constrained: [(v) => typeof v === 'boolean', 'true or false'],
  generation: [isObject, 'an object'],
};

/** Return the contract stored in edgepack.json's "contract", with Contract's defaults filled in. */
export function contractFromJson(data: unknown): Contract {
  if (!isObject(data)) {
    throw new ContractFormatError('edgepack.json: "contract" must be an object');
  }
  const contract = contractDefaults();
  const fields = contract as unknown as Record<string, unknown>;
  for (const [key, value] of Object.entries(data)) {
    if (!hasKey(FIELD_CHECKS, key)) {
      throw new ContractFormatError(
        `edgepack.json: unknown contract field "${key}" (bridge and edgepack versions differ?)`,
      );
    }
    const [check, expected] = FIELD_CHECKS[key as keyof Contract];
    if (!check(value)) {
      throw new ContractFormatError(`edgepack.json: contract field "${key}" must be ${expected}`);
    }
    fields[key] = value;
  }
  const prompt: PromptFormat = { ...PROMPT_DEFAULTS };
  for (const [key, value] of Object.entries(isObject(data.prompt) ? data.prompt : {})) {
    if (!hasKey(PROMPT_DEFAULTS, key)) {
      throw new ContractFormatError(`edgepack.json: unknown prompt field "${key}"`);
    }
    if (typeof value !== 'string') {
      throw new ContractFormatError(`edgepack.json: prompt field "${key}" must be a string`);
    }
    prompt[key as keyof PromptFormat] = value;
  }
  contract.prompt = prompt;
  return contract;
}
