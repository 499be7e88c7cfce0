// Test harness (not shipped): runs the bridge's pure-Kotlin contract code on cases given as JSON and
// prints its answers as JSON, so tests/test_android.py can compare them with packager/contract.py.
//
//   java -cp edgepack.jar:probe.jar org.edgepack.probe.ContractProbeKt cases.json
//
// cases.json: {"contracts": {name: contract as in edgepack.json}, "render": [...], "parse": [...],
// "grammar": [...], "fill": [...]} (the shape of tests/vectors/contract.json).
package org.edgepack.probe

import org.edgepack.ContractFormatError
import org.edgepack.JsonValue
import org.edgepack.ParseResult
import org.edgepack.contractFromJson
import org.edgepack.fillTemplate
import org.edgepack.labelsGrammar
import org.edgepack.parseJson
import org.edgepack.parseOutput
import org.edgepack.quoteJson
import org.edgepack.renderPrompt
import org.edgepack.toJson
import java.io.File

private fun str(
    obj: JsonValue,
    key: String,
): String = ((obj as JsonValue.Obj).fields[key] as JsonValue.Str).value

private fun list(
    obj: JsonValue,
    key: String,
): List<JsonValue> = ((obj as JsonValue.Obj).fields[key] as? JsonValue.Arr)?.items ?: emptyList()

private fun parseResultJson(result: ParseResult): String {
    val error = result.error?.let { "{\"code\": ${quoteJson(it.code)}, \"path\": ${quoteJson(it.path)}}" } ?: "null"
    return "{\"ok\": ${result.ok}, \"value\": ${toJson(result.value)}, \"error\": $error, \"text\": ${quoteJson(result.text)}}"
}

fun main(args: Array<String>) {
    val cases = parseJson(File(args[0]).readText()) as JsonValue.Obj
    val contracts = (cases.fields["contracts"] as JsonValue.Obj).fields.mapValues { contractFromJson(it.value) }
    val render =
        list(cases, "render").map {
            quoteJson(renderPrompt(contracts.getValue(str(it, "contract")), str(it, "input"), str(it, "instruction")))
        }
    val parse = list(cases, "parse").map { parseResultJson(parseOutput(contracts.getValue(str(it, "contract")), str(it, "raw"))) }
    val grammar = list(cases, "grammar").map { case -> quoteJson(labelsGrammar(list(case, "labels").map { (it as JsonValue.Str).value })) }
    val fill =
        list(cases, "fill").map {
            try {
                val values =
                    ((it as JsonValue.Obj).fields["values"] as JsonValue.Obj).fields.mapValues { v ->
                        (v.value as JsonValue.Str).value
                    }
                "{\"ok\": " + quoteJson(fillTemplate(str(it, "template"), values)) + "}"
            } catch (e: ContractFormatError) {
                "{\"error\": " + quoteJson(e.message ?: "") + "}"
            }
        }
    println(
        "{\"render\": [" + render.joinToString(", ") + "], \"parse\": [" + parse.joinToString(", ") +
            "], \"grammar\": [" + grammar.joinToString(", ") + "], \"fill\": [" + fill.joinToString(", ") + "]}",
    )
}
