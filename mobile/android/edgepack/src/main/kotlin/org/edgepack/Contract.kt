package org.edgepack

/*
 * The task contract, ported line by line from packager/contract.py (pure Kotlin: no Android classes).
 *
 * Every bridge renders prompts and reads answers exactly like the Python reference, so what was
 * verified at build time is what runs on the phone; tests/vectors/contract.json is the shared proof,
 * run on the JVM by edgepack's test suite. Where Kotlin and Python disagree on a primitive (what
 * strip() removes, string indices, == between true and 1) a helper reproduces Python's behaviour.
 */

/** prefix + template (with {instruction} and {input} filled in) + suffix. */
data class PromptFormat(
    val prefix: String = "",
    val template: String = "{input}",
    val suffix: String = "",
    // "chat_template" when prefix/suffix come from the model's chat template, else "plain".
    val source: String = "plain",
)

/** What a caller needs to drive the model the way it was fine-tuned (fields as in edgepack.json). */
data class Contract(
    val task: String = "text",
    val labels: List<String>? = null,
    val jsonSchema: JsonValue.Obj? = null,
    val prompt: PromptFormat = PromptFormat(),
    val addBos: Boolean = true,
    val bosId: Long? = null,
    val bosToken: String? = null,
    val eosIds: List<Long> = emptyList(),
    val stopStrings: List<String> = emptyList(),
    val chatTemplate: String? = null,
    val maxNewTokens: Int = 128,
    val constrained: Boolean = false,
    val generation: JsonValue.Obj = JsonValue.Obj(emptyMap()),
)

/** Why an answer broke the contract: unknown_label, invalid_json or schema_mismatch, at a JSON pointer. */
data class ParseError(
    val code: String,
    val path: String,
)

/** {ok, value, error, text}: the same four fields, in the same meaning, as parse_output() in Python. */
data class ParseResult(
    val ok: Boolean,
    val value: JsonValue,
    val error: ParseError?,
    val text: String,
)

/** A prompt template or a contract in edgepack.json that cannot be used as written. */
class ContractFormatError(
    message: String,
) : IllegalArgumentException(message)

// ---------------------------------------------------------------------------------------------
// Python semantics the port relies on.

// Exactly the characters for which Python's str.isspace() is true, i.e. what str.strip() removes.
// Kotlin's trim() differs (it uses Char.isWhitespace, which keeps U+0085 and U+00A0 among others).
private val PY_WHITESPACE: Set<Int> =
    setOf(
        0x09,
        0x0a,
        0x0b,
        0x0c,
        0x0d,
        0x1c,
        0x1d,
        0x1e,
        0x1f,
        0x20,
        0x85,
        0xa0,
        0x1680,
        0x2000,
        0x2001,
        0x2002,
        0x2003,
        0x2004,
        0x2005,
        0x2006,
        0x2007,
        0x2008,
        0x2009,
        0x200a,
        0x2028,
        0x2029,
        0x202f,
        0x205f,
        0x3000,
    )

/** Return text without leading and trailing whitespace, as Python's str.strip() defines it. */
fun pyStrip(text: String): String {
    var start = 0
    var end = text.length
    while (start < end && text[start].code in PY_WHITESPACE) start += 1
    while (end > start && text[end - 1].code in PY_WHITESPACE) end -= 1
    return text.substring(start, end)
}

// Python indexes strings by code point; error messages quote Python's index.
private fun codePointIndex(
    text: String,
    utf16Index: Int,
): Int = text.codePointCount(0, utf16Index)

// ---------------------------------------------------------------------------------------------
// Rendering and parsing: mirrors of packager/contract.py (keep them simple and explicit).

/** Replace {name} placeholders; `{{` and `}}` are literal braces; unknown names are an error. */
fun fillTemplate(
    template: String,
    values: Map<String, String>,
): String {
    val out = StringBuilder()
    var i = 0
    while (i < template.length) {
        val ch = template[i]
        if (ch == '{' && template.startsWith("{{", i)) {
            out.append('{')
            i += 2
        } else if (ch == '}' && template.startsWith("}}", i)) {
            out.append('}')
            i += 2
        } else if (ch == '{') {
            val end = template.indexOf('}', i)
            if (end < 0) {
                throw ContractFormatError("unclosed placeholder at ${codePointIndex(template, i)} in prompt template")
            }
            val name = template.substring(i + 1, end)
            val value = values[name] ?: throw ContractFormatError("unknown placeholder {$name} in prompt template")
            out.append(value)
            i = end + 1
        } else {
            out.append(ch)
            i += 1
        }
    }
    return out.toString()
}

/** Return the exact text the model sees (BOS is not included: the runtime adds it if addBos). */
fun renderPrompt(
    contract: Contract,
    inputText: String,
    instruction: String = "",
): String {
    val body = fillTemplate(contract.prompt.template, mapOf("input" to inputText, "instruction" to instruction))
    return contract.prompt.prefix + body + contract.prompt.suffix
}

/** Cut the raw generation at the first stop string, then strip surrounding whitespace. */
fun cleanOutput(
    contract: Contract,
    raw: String,
): String {
    var cut = raw.length
    for (stop in contract.stopStrings) {
        val pos = raw.indexOf(stop)
        if (pos in 0 until cut) {
            cut = pos
        }
    }
    return pyStrip(raw.substring(0, cut))
}

/** Return {ok, value, error, text}; error is null or {code, path}. Nothing is repaired. */
fun parseOutput(
    contract: Contract,
    raw: String,
): ParseResult {
    val text = cleanOutput(contract, raw)
    if (contract.task == "labels") {
        if (text in (contract.labels ?: emptyList())) {
            return ParseResult(true, JsonValue.Str(text), null, text)
        }
        return ParseResult(false, JsonValue.Null, ParseError("unknown_label", ""), text)
    }
    if (contract.task == "json") {
        val value =
            try {
                parseJson(text)
            } catch (e: JsonSyntaxError) {
                return ParseResult(false, JsonValue.Null, ParseError("invalid_json", ""), text)
            }
        val path = schemaViolation(value, contract.jsonSchema ?: JsonValue.Obj(emptyMap()), "")
        if (path != null) {
            return ParseResult(false, value, ParseError("schema_mismatch", path), text)
        }
        return ParseResult(true, value, null, text)
    }
    return ParseResult(true, JsonValue.Str(text), null, text)
}

private fun jsonType(value: JsonValue): String =
    when (value) {
        is JsonValue.Null -> "null"
        is JsonValue.Bool -> "boolean"
        is JsonValue.Int -> "integer"
        is JsonValue.Float -> if (value.value.isFinite() && value.value == Math.rint(value.value)) "integer" else "number"
        is JsonValue.Str -> "string"
        is JsonValue.Arr -> "array"
        is JsonValue.Obj -> "object"
    }

private fun typeMatches(
    value: JsonValue,
    expected: JsonValue,
): Boolean {
    val actual = JsonValue.Str(jsonType(value))
    val allowed = if (expected is JsonValue.Arr) expected.items else listOf(expected)
    return allowed.any { pyEquals(it, actual) } ||
        (actual.value == "integer" && allowed.any { pyEquals(it, JsonValue.Str("number")) })
}

private fun pyContains(
    container: JsonValue,
    value: JsonValue,
): Boolean {
    if (container !is JsonValue.Arr) throw ContractFormatError("JSON schema: \"enum\" must be an array")
    return container.items.any { pyEquals(it, value) }
}

// len(value) compared with a schema bound, as Python compares an int with an int or a float.
private fun lengthBelow(
    length: Int,
    bound: JsonValue?,
): Boolean = bound != null && compareLength(length, bound, "minItems") < 0

private fun lengthAbove(
    length: Int,
    bound: JsonValue?,
): Boolean = bound != null && compareLength(length, bound, "maxItems") > 0

private fun compareLength(
    length: Int,
    bound: JsonValue,
    key: String,
): Int =
    when (bound) {
        is JsonValue.Int -> length.toBigInteger().compareTo(bound.value)
        is JsonValue.Float -> length.toDouble().compareTo(bound.value)
        is JsonValue.Bool -> length.compareTo(if (bound.value) 1 else 0)
        else -> throw ContractFormatError("JSON schema: \"$key\" must be a number")
    }

/**
 * Return the JSON pointer of the first violation of a JSON-schema subset, or null.
 *
 * Supported: type, enum, const, properties, required, additionalProperties (false), items,
 * minItems, maxItems. Order of checks (shared by every bridge): type, const, enum, then for
 * objects required (in schema order), properties (schema order), additional keys (value order);
 * for arrays the length bounds, then items in order.
 */
fun schemaViolation(
    value: JsonValue,
    schema: JsonValue.Obj,
    path: String,
): String? {
    val rules = schema.fields
    val type = rules["type"]
    if (type != null && !typeMatches(value, type)) {
        return path
    }
    val const = rules["const"]
    if (const != null && !pyEquals(value, const)) {
        return path
    }
    val enum = rules["enum"]
    if (enum != null && !pyContains(enum, value)) {
        return path
    }
    if (value is JsonValue.Obj) {
        val props = (rules["properties"] as? JsonValue.Obj)?.fields ?: emptyMap()
        val required = (rules["required"] as? JsonValue.Arr)?.items ?: emptyList()
        for (key in required) {
            val name = (key as? JsonValue.Str)?.value ?: throw ContractFormatError("JSON schema: \"required\" must list strings")
            if (name !in value.fields) {
                return "$path/$name"
            }
        }
        for ((key, sub) in props) {
            val item = value.fields[key] ?: continue
            val subSchema = sub as? JsonValue.Obj ?: throw ContractFormatError("JSON schema: property \"$key\" must be an object")
            val found = schemaViolation(item, subSchema, "$path/$key")
            if (found != null) {
                return found
            }
        }
        if (rules["additionalProperties"] == JsonValue.Bool(false)) {
            for (key in value.fields.keys) {
                if (key !in props) {
                    return "$path/$key"
                }
            }
        }
    }
    if (value is JsonValue.Arr) {
        if (lengthBelow(value.items.size, rules["minItems"]) || lengthAbove(value.items.size, rules["maxItems"])) {
            return path
        }
        val items = rules["items"]
        if (items != null) {
            val itemSchema = items as? JsonValue.Obj ?: throw ContractFormatError("JSON schema: \"items\" must be an object")
            for ((i, item) in value.items.withIndex()) {
                val found = schemaViolation(item, itemSchema, "$path/$i")
                if (found != null) {
                    return found
                }
            }
        }
    }
    return null
}

/** A GBNF string literal: backslash, quote and control characters escaped. */
fun gbnfLiteral(text: String): String {
    var escaped =
        text
            .replace("\\", "\\\\")
            .replace("\"", "\\\"")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
    escaped = escaped.replace("\t", "\\t")
    return "\"" + escaped + "\""
}

/** GBNF grammar that admits exactly one of the labels (for llama.cpp-based runtimes). */
fun labelsGrammar(labels: List<String>): String = "root ::= \" \"? (" + labels.joinToString(" | ") { gbnfLiteral(it) } + ")\n"

// ---------------------------------------------------------------------------------------------
// Reading the contract from edgepack.json: Contract.from_dict, with types checked because a phone
// has no better place to report a damaged file than here.

private val CONTRACT_FIELDS =
    setOf(
        "task",
        "labels",
        "json_schema",
        "prompt",
        "add_bos",
        "bos_id",
        "bos_token",
        "eos_ids",
        "stop_strings",
        "chat_template",
        "max_new_tokens",
        "constrained",
        "generation",
    )
private val PROMPT_FIELDS = setOf("prefix", "template", "suffix", "source")

private fun fieldError(
    key: String,
    expected: String,
): Nothing = throw ContractFormatError("edgepack.json: contract field \"$key\" must be $expected")

private fun stringOrNull(
    fields: Map<String, JsonValue>,
    key: String,
): String? =
    when (val v = fields[key]) {
        null, is JsonValue.Null -> null
        is JsonValue.Str -> v.value
        else -> fieldError(key, "a string or null")
    }

private fun longOrNull(
    fields: Map<String, JsonValue>,
    key: String,
): Long? =
    when (val v = fields[key]) {
        null, is JsonValue.Null -> null
        is JsonValue.Int -> v.value.toLong()
        else -> fieldError(key, "an integer or null")
    }

private fun bool(
    fields: Map<String, JsonValue>,
    key: String,
    default: Boolean,
): Boolean =
    when (val v = fields[key]) {
        null -> default
        is JsonValue.Bool -> v.value
        else -> fieldError(key, "true or false")
    }

private fun strings(
    value: JsonValue?,
    key: String,
): List<String>? =
    when (value) {
        null, is JsonValue.Null -> null
        is JsonValue.Arr -> value.items.map { (it as? JsonValue.Str)?.value ?: fieldError(key, "a list of strings") }
        else -> fieldError(key, "a list of strings")
    }

/** Return the contract stored in edgepack.json's "contract", with Contract's defaults filled in. */
fun contractFromJson(data: JsonValue): Contract {
    val fields = (data as? JsonValue.Obj)?.fields ?: throw ContractFormatError("edgepack.json: \"contract\" must be an object")
    for (key in fields.keys) {
        if (key !in CONTRACT_FIELDS) {
            throw ContractFormatError("edgepack.json: unknown contract field \"$key\" (bridge and edgepack versions differ?)")
        }
    }
    val promptFields = (fields["prompt"] ?: JsonValue.Obj(emptyMap())) as? JsonValue.Obj ?: fieldError("prompt", "an object")
    for ((key, value) in promptFields.fields) {
        if (key !in PROMPT_FIELDS) throw ContractFormatError("edgepack.json: unknown prompt field \"$key\"")
        if (value !is JsonValue.Str) throw ContractFormatError("edgepack.json: prompt field \"$key\" must be a string")
    }
    val prompt = promptFields.fields.mapValues { (it.value as JsonValue.Str).value }
    val defaults = PromptFormat()
    val schema =
        when (val v = fields["json_schema"]) {
            null, is JsonValue.Null -> null
            is JsonValue.Obj -> v
            else -> fieldError("json_schema", "an object or null")
        }
    val eosIds =
        when (val v = fields["eos_ids"]) {
            null -> emptyList()
            is JsonValue.Arr -> v.items.map { (it as? JsonValue.Int)?.value?.toLong() ?: fieldError("eos_ids", "a list of integers") }
            else -> fieldError("eos_ids", "a list of integers")
        }
    val maxNewTokens =
        when (val v = fields["max_new_tokens"]) {
            null -> 128
            is JsonValue.Int -> v.value.toInt()
            else -> fieldError("max_new_tokens", "an integer")
        }
    val generation =
        when (val v = fields["generation"]) {
            null -> JsonValue.Obj(emptyMap())
            is JsonValue.Obj -> v
            else -> fieldError("generation", "an object")
        }
    val task =
        when (val v = fields["task"]) {
            null -> "text"
            is JsonValue.Str -> v.value
            else -> fieldError("task", "a string")
        }
    return Contract(
        task = task,
        labels = strings(fields["labels"], "labels"),
        jsonSchema = schema,
        prompt =
            PromptFormat(
                prefix = prompt["prefix"] ?: defaults.prefix,
                template = prompt["template"] ?: defaults.template,
                suffix = prompt["suffix"] ?: defaults.suffix,
                source = prompt["source"] ?: defaults.source,
            ),
        addBos = bool(fields, "add_bos", true),
        bosId = longOrNull(fields, "bos_id"),
        bosToken = stringOrNull(fields, "bos_token"),
        eosIds = eosIds,
        stopStrings = strings(fields["stop_strings"], "stop_strings") ?: emptyList(),
        chatTemplate = stringOrNull(fields, "chat_template"),
        maxNewTokens = maxNewTokens,
        constrained = bool(fields, "constrained", false),
        generation = generation,
    )
}
