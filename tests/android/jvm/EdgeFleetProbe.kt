// Test harness (not shipped): drives the bridge's EdgeFleet over a real android bundle's edgepack.json with a
// scripted engine (no ExecuTorch on the JVM) and prints, as JSON for tests/test_android.py, which files each
// specialist opened, what was closed in between, the files the app must check, and each specialist's contract.
//
//   java -cp bridge.jar org.edgepack.probe.EdgeFleetProbeKt BUNDLE_DIR
package org.edgepack.probe

import org.edgepack.BackendModel
import org.edgepack.EdgeFleet
import org.edgepack.EngineFactory
import org.edgepack.LlmEngine
import org.edgepack.quoteJson
import java.io.File

private class RecordingEngine(
    private val name: String,
    private val log: MutableList<String>,
) : LlmEngine {
    override fun load() {
        log.add("load $name")
    }

    override fun generate(
        prompt: String,
        numBos: Int,
        seqLen: Int,
        onPiece: (String) -> Unit,
        onStats: (String) -> Unit,
    ) {
        log.add("generate $name numBos=$numBos seqLen=$seqLen")
        onPiece("x")
    }

    override fun stop() {}

    override fun resetContext() {}

    override fun close() {
        log.add("close $name")
    }
}

fun main(args: Array<String>) {
    val dir = File(args[0])
    val log = mutableListOf<String>()
    val factory =
        EngineFactory { model: BackendModel, _, tokenizer ->
            log.add("open ${model.file} + ${model.ptd} + ${tokenizer?.name}")
            RecordingEngine(model.file, log)
        }
    val fleet = EdgeFleet.load(dir, factory)
    val tasks = mutableListOf<String>()
    for (name in fleet.names) {
        val model = fleet.use(name, warmUp = false)
        if (fleet.use(name, warmUp = false) !== model) throw IllegalStateException("use($name) reopened the open specialist")
        model.generate("p", 1)
        tasks.add("{\"name\": ${quoteJson(name)}, \"task\": ${quoteJson(model.contract.task)}, \"max_context\": ${model.manifest.maxContext}}")
    }
    val unknown =
        try {
            fleet.use("no-such-specialist")
            ""
        } catch (e: IllegalArgumentException) {
            e.message ?: ""
        }
    fleet.close()
    val files = fleet.requiredFiles().joinToString(", ", "[", "]") { quoteJson(it.path) }
    val events = log.joinToString(", ", "[", "]") { quoteJson(it) }
    println(
        "{\"names\": ${fleet.names.joinToString(", ", "[", "]") { quoteJson(it) }}, \"log\": $events, " +
            "\"required\": $files, \"specialists\": ${tasks.joinToString(", ", "[", "]")}, \"unknown\": ${quoteJson(unknown)}}",
    )
}
