package org.edgepack

import java.math.BigDecimal
import java.math.BigInteger

/**
 * JSON values with Python's meaning, so the contract compares and types values exactly as
 * packager/contract.py does (json.loads with NaN and Infinity refused).
 *
 * A number keeps whether it was written as an integer (Python int, unbounded) or not (Python
 * float, a Double): the schema's "integer" type and Python's == depend on that difference.
 */
sealed class JsonValue {
    object Null : JsonValue()

    data class Bool(
        val value: Boolean,
    ) : JsonValue()

    data class Int(
        val value: BigInteger,
    ) : JsonValue()

    data class Float(
        val value: Double,
    ) : JsonValue()

    data class Str(
        val value: String,
    ) : JsonValue()

    data class Arr(
        val items: List<JsonValue>,
    ) : JsonValue()

    /** Keys in first-seen order; a repeated key keeps its first position and its last value, as in Python. */
    data class Obj(
        val fields: Map<String, JsonValue>,
    ) : JsonValue()
}

/** The text is not JSON as Python's json.loads (with NaN/Infinity refused) reads it. */
class JsonSyntaxError(
    message: String,
) : IllegalArgumentException(message)

/** Parse one JSON document exactly like Python's json.loads: strict strings, no NaN/Infinity, nothing after it. */
fun parseJson(text: String): JsonValue = JsonReader(text).document()

private class JsonReader(
    private val text: String,
) {
    private var pos = 0

    fun document(): JsonValue {
        skipWhitespace()
        val value = value()
        skipWhitespace()
        if (pos != text.length) fail("extra data")
        return value
    }

    private fun fail(what: String): Nothing = throw JsonSyntaxError("$what at offset $pos")

    // JSON's whitespace is only these four characters (Python's json agrees).
    private fun skipWhitespace() {
        while (pos < text.length && text[pos] in " \t\n\r") pos += 1
    }

    private fun value(): JsonValue {
        if (pos >= text.length) fail("expecting value")
        return when (text[pos]) {
            '{' -> obj()
            '[' -> arr()
            '"' -> JsonValue.Str(string())
            't' -> literal("true", JsonValue.Bool(true))
            'f' -> literal("false", JsonValue.Bool(false))
            'n' -> literal("null", JsonValue.Null)
            else -> number()
        }
    }

    private fun literal(
        word: String,
        value: JsonValue,
    ): JsonValue {
        if (!text.startsWith(word, pos)) fail("expecting value")
        pos += word.length
        return value
    }

    private fun obj(): JsonValue {
        pos += 1
        val fields = LinkedHashMap<String, JsonValue>()
        skipWhitespace()
        if (pos < text.length && text[pos] == '}') {
            pos += 1
            return JsonValue.Obj(fields)
        }
        while (true) {
            skipWhitespace()
            if (pos >= text.length || text[pos] != '"') fail("expecting property name in double quotes")
            val key = string()
            skipWhitespace()
            if (pos >= text.length || text[pos] != ':') fail("expecting ':' delimiter")
            pos += 1
            skipWhitespace()
            fields[key] = value()
            skipWhitespace()
            if (pos >= text.length) fail("expecting ',' delimiter")
            when (text[pos]) {
                ',' -> {
                    pos += 1
                }

                '}' -> {
                    pos += 1
                    return JsonValue.Obj(fields)
                }

                else -> {
                    fail("expecting ',' delimiter")
                }
            }
        }
    }

    private fun arr(): JsonValue {
        pos += 1
        val items = ArrayList<JsonValue>()
        skipWhitespace()
        if (pos < text.length && text[pos] == ']') {
            pos += 1
            return JsonValue.Arr(items)
        }
        while (true) {
            skipWhitespace()
            items.add(value())
            skipWhitespace()
            if (pos >= text.length) fail("expecting ',' delimiter")
            when (text[pos]) {
                ',' -> {
                    pos += 1
                }

                ']' -> {
                    pos += 1
                    return JsonValue.Arr(items)
                }

                else -> {
                    fail("expecting ',' delimiter")
                }
            }
        }
    }

    private fun string(): String {
        pos += 1
        val out = StringBuilder()
        while (true) {
            if (pos >= text.length) fail("unterminated string")
            val ch = text[pos]
            when {
                ch == '"' -> {
                    pos += 1
                    return out.toString()
                }

                ch == '\\' -> {
                    escape(out)
                }

                ch < ' ' -> {
                    fail("invalid control character")
                }

                else -> {
                    out.append(ch)
                    pos += 1
                }
            }
        }
    }

    private fun escape(out: StringBuilder) {
        if (pos + 1 >= text.length) fail("unterminated string")
        when (val code = text[pos + 1]) {
            '"', '\\', '/' -> {
                out.append(code)
            }

            'b' -> {
                out.append('\b')
            }

            'f' -> {
                out.append('\u000c')
            }

            'n' -> {
                out.append('\n')
            }

            'r' -> {
                out.append('\r')
            }

            't' -> {
                out.append('\t')
            }

            'u' -> {
                if (pos + 6 > text.length) fail("invalid \\uXXXX escape")
                val hex = text.substring(pos + 2, pos + 6)
                if (!hex.all { it in "0123456789abcdefABCDEF" }) fail("invalid \\uXXXX escape")
                // A surrogate half stays as it is, paired or not: Python keeps lone surrogates too.
                out.append(hex.toInt(16).toChar())
                pos += 6
                return
            }

            else -> {
                fail("invalid \\escape")
            }
        }
        pos += 2
    }

    private fun number(): JsonValue {
        val start = pos
        if (pos < text.length && text[pos] == '-') pos += 1
        if (pos >= text.length || !text[pos].isAsciiDigit()) {
            pos = start
            fail("expecting value") // also NaN, Infinity, -Infinity: refused like Python's parse_constant hook
        }
        if (text[pos] == '0') {
            pos += 1
        } else {
            while (pos < text.length && text[pos].isAsciiDigit()) pos += 1
        }
        var integral = true
        if (pos + 1 < text.length && text[pos] == '.' && text[pos + 1].isAsciiDigit()) {
            integral = false
            pos += 1
            while (pos < text.length && text[pos].isAsciiDigit()) pos += 1
        }
        if (pos < text.length && (text[pos] == 'e' || text[pos] == 'E')) {
            var end = pos + 1
            if (end < text.length && (text[end] == '+' || text[end] == '-')) end += 1
            if (end < text.length && text[end].isAsciiDigit()) {
                integral = false
                pos = end
                while (pos < text.length && text[pos].isAsciiDigit()) pos += 1
            }
        }
        val literal = text.substring(start, pos)
        return if (integral) JsonValue.Int(BigInteger(literal)) else JsonValue.Float(literal.toDouble())
    }

    private fun Char.isAsciiDigit(): Boolean = this in '0'..'9'
}

/** Python's == on values read from JSON: True == 1 == 1.0, numbers compared exactly, objects by keys and values. */
fun pyEquals(
    a: JsonValue,
    b: JsonValue,
): Boolean {
    if (isNumber(a) && isNumber(b)) {
        val x = numericValue(a)
        val y = numericValue(b)
        if (x != null && y != null) return x.compareTo(y) == 0
        return a is JsonValue.Float && b is JsonValue.Float && a.value == b.value // infinities
    }
    return when (a) {
        is JsonValue.Null -> {
            b is JsonValue.Null
        }

        is JsonValue.Str -> {
            b is JsonValue.Str && a.value == b.value
        }

        is JsonValue.Arr -> {
            b is JsonValue.Arr && a.items.size == b.items.size &&
                a.items.indices.all { pyEquals(a.items[it], b.items[it]) }
        }

        is JsonValue.Obj -> {
            b is JsonValue.Obj && a.fields.size == b.fields.size &&
                a.fields.all { (key, value) -> b.fields[key]?.let { pyEquals(value, it) } ?: false }
        }

        else -> {
            false
        }
    }
}

private fun isNumber(value: JsonValue): Boolean = value is JsonValue.Bool || value is JsonValue.Int || value is JsonValue.Float

/** Exact value of a bool or a finite number (infinities have none: they compare only to themselves). */
private fun numericValue(value: JsonValue): BigDecimal? =
    when (value) {
        is JsonValue.Bool -> if (value.value) BigDecimal.ONE else BigDecimal.ZERO
        is JsonValue.Int -> BigDecimal(value.value)
        is JsonValue.Float -> if (value.value.isFinite()) BigDecimal(value.value) else null
        else -> null
    }

/** Serialize a value as JSON text; non-finite numbers are written as Python writes them (for reports, not for parsing). */
fun toJson(value: JsonValue): String =
    when (value) {
        is JsonValue.Null -> {
            "null"
        }

        is JsonValue.Bool -> {
            if (value.value) "true" else "false"
        }

        is JsonValue.Int -> {
            value.value.toString()
        }

        is JsonValue.Float -> {
            when {
                value.value.isNaN() -> "NaN"
                value.value == Double.POSITIVE_INFINITY -> "Infinity"
                value.value == Double.NEGATIVE_INFINITY -> "-Infinity"
                else -> value.value.toString()
            }
        }

        is JsonValue.Str -> {
            quoteJson(value.value)
        }

        is JsonValue.Arr -> {
            value.items.joinToString(", ", "[", "]") { toJson(it) }
        }

        is JsonValue.Obj -> {
            value.fields.entries.joinToString(", ", "{", "}") { quoteJson(it.key) + ": " + toJson(it.value) }
        }
    }

/** A JSON string literal; surrogates are escaped, so an unpaired half survives any UTF-8 round trip. */
fun quoteJson(text: String): String {
    val out = StringBuilder("\"")
    for (ch in text) {
        when {
            ch == '"' -> out.append("\\\"")
            ch == '\\' -> out.append("\\\\")
            ch == '\n' -> out.append("\\n")
            ch == '\r' -> out.append("\\r")
            ch == '\t' -> out.append("\\t")
            ch == '\b' -> out.append("\\b")
            ch == '\u000c' -> out.append("\\f")
            ch < ' ' || ch.isSurrogate() -> out.append(String.format("\\u%04x", ch.code))
            else -> out.append(ch)
        }
    }
    return out.append('"').toString()
}
