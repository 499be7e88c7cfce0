// Test harness (not shipped): drives the bridge's EdgeModel and file helpers on the JVM with a
// scripted engine instead of ExecuTorch or LiteRT-LM, and prints what happened as JSON for
// tests/test_android.py. A scripted LiteRT-LM backend ends silently at eos, as LiteRT-LM's engine does.
//
//   java -cp edgepack.jar:probe.jar org.edgepack.probe.EdgeModelProbeKt BUNDLE_DIR SCENARIO
//
// BUNDLE_DIR holds an android bundle's edgepack.json (backends in the order the app tries them).
package org.edgepack.probe

import org.edgepack.BackendModel
import org.edgepack.EdgeModel
import org.edgepack.EngineFactory
import org.edgepack.FileEntry
import org.edgepack.LlmEngine
import org.edgepack.ModelFileError
import org.edgepack.RuntimeFactories
import org.edgepack.downloadVerified
import org.edgepack.quoteJson
import org.edgepack.verifyFile
import java.io.File
import java.util.concurrent.CountDownLatch

/** A fake runtime: fails where told, otherwise sends `pieces` one by one (honouring stop()). */
class ScriptedEngine(
    private val backend: String,
    private val failLoad: Boolean,
    private val failGenerateAfter: Int,
    private val pieces: List<String>,
    private val log: MutableList<String>,
    private val pieceGate: CountDownLatch? = null,
    override val endsSilentlyAtEos: Boolean = false,
) : LlmEngine {
    @Volatile private var stopped = false
    private var generations = 0

    override fun load() {
        log.add("$backend.load")
        if (failLoad) throw IllegalStateException("$backend: delegate not available on this device")
    }

    override fun generate(
        prompt: String,
        numBos: Int,
        seqLen: Int,
        onPiece: (String) -> Unit,
        onStats: (String) -> Unit,
    ) {
        generations += 1
        log.add("$backend.generate(numBos=$numBos, seqLen=$seqLen)")
        if (generations > failGenerateAfter) throw RuntimeException("$backend: method execution failed (0x12)")
        stopped = false
        for ((i, piece) in pieces.withIndex()) {
            if (i == 1) pieceGate?.await()
            if (stopped) break
            onPiece(piece)
        }
        onStats("{\"generated_tokens\": 4, \"prompt_eval_end_ms\": 1000, \"inference_end_ms\": 1500}")
    }

    override fun stop() {
        log.add("$backend.stop")
        stopped = true
    }

    override fun resetContext() {
        log.add("$backend.reset")
    }

    override fun close() {
        log.add("$backend.close")
    }
}

private fun result(
    model: EdgeModel?,
    log: List<String>,
    extra: String,
): String {
    val skipped = model?.skipped?.joinToString(", ", "[", "]") { quoteJson(it) } ?: "[]"
    val events = log.joinToString(", ", "[", "]") { quoteJson(it) }
    return "{\"backend\": ${quoteJson(model?.backend ?: "")}, \"skipped\": $skipped, \"log\": $events$extra}"
}

fun main(args: Array<String>) {
    val dir = File(args[0])
    val scenario = args[1]
    val log: MutableList<String> = java.util.Collections.synchronizedList(mutableListOf())
    val answer = listOf("bill", "ing", "<end_of_turn>", "never")

    fun factory(
        failLoad: Set<String> = emptySet(),
        failGenerateAfter: Map<String, Int> = emptyMap(),
        pieces: List<String> = answer,
        gate: CountDownLatch? = null,
    ) = EngineFactory { model: BackendModel, _, _ ->
        ScriptedEngine(model.label, model.label in failLoad, failGenerateAfter[model.label] ?: Int.MAX_VALUE, pieces, log, gate)
    }

    // Both runtimes behind RuntimeFactories, as the app wires them; LiteRT-LM sends no eos piece.
    fun runtimes(
        failLoad: Set<String> = emptySet(),
        failGenerateAfter: Map<String, Int> = emptyMap(),
        linked: Set<String> = setOf("executorch", "litert-lm"),
    ): RuntimeFactories {
        val litert =
            EngineFactory { model: BackendModel, _, _ ->
                val fail = failGenerateAfter[model.label] ?: Int.MAX_VALUE
                ScriptedEngine(model.label, model.label in failLoad, fail, listOf("bill", "ing"), log, endsSilentlyAtEos = true)
            }
        val all = mapOf("executorch" to factory(failLoad, failGenerateAfter), "litert-lm" to litert)
        return RuntimeFactories(all.filterKeys { it in linked })
    }

    fun ran(
        model: EdgeModel,
        a: org.edgepack.Answer,
    ) = result(
        model,
        log,
        ", \"ran_on\": ${quoteJson(a.generation.backend)}, \"value\": ${quoteJson(a.result.text)}" +
            ", \"finish\": ${quoteJson(a.generation.finish)}",
    )
    val out =
        when (scenario) {
            "accelerator_works" -> {
                val model = EdgeModel.load(dir, factory())
                val answerOf = model.run("my card got declined")
                result(
                    model,
                    log,
                    ", \"text\": ${quoteJson(answerOf.generation.text)}, \"ran_on\": ${quoteJson(answerOf.generation.backend)}",
                )
            }

            "accelerator_fails_to_load" -> {
                val model = EdgeModel.load(dir, factory(failLoad = setOf("vulkan")))
                val a = model.run("x")
                result(model, log, ", \"ran_on\": ${quoteJson(a.generation.backend)}, \"ok\": ${a.result.ok}")
            }

            "accelerator_fails_warm_up" -> {
                val model = EdgeModel.load(dir, factory(failGenerateAfter = mapOf("vulkan" to 0)))
                result(model, log, "")
            }

            "accelerator_fails_while_running" -> {
                val model = EdgeModel.load(dir, factory(failGenerateAfter = mapOf("vulkan" to 1)))
                val a = model.run("x")
                result(model, log, ", \"ran_on\": ${quoteJson(a.generation.backend)}, \"value\": ${quoteJson(a.result.text)}")
            }

            "every_backend_fails" -> {
                val message =
                    try {
                        EdgeModel.load(dir, factory(failLoad = setOf("vulkan", "xnnpack")))
                        ""
                    } catch (e: ModelFileError) {
                        e.message ?: ""
                    }
                result(null, log, ", \"error\": ${quoteJson(message)}")
            }

            "stops" -> {
                val model = EdgeModel.load(dir, factory(pieces = listOf("a", "b", "STOP", "c", "d")), warmUp = false)
                val byString = model.generate("p", 10)
                val byCount = model.generate("p", 2)
                val eos = EdgeModel.load(dir, factory(pieces = listOf("yes", "<eos>", "tail")), warmUp = false).generate("p", 10)
                result(
                    model,
                    log,
                    ", \"stop_string\": [${quoteJson(byString.text)}, ${quoteJson(byString.finish)}]" +
                        ", \"max_new_tokens\": [${quoteJson(byCount.text)}, ${quoteJson(byCount.finish)}, ${byCount.tokens}]" +
                        ", \"eos\": [${quoteJson(eos.text)}, ${quoteJson(eos.finish)}], \"tokens_per_s\": ${byString.tokensPerSecond}",
                )
            }

            "cancel" -> {
                val gate = CountDownLatch(1)
                val model = EdgeModel.load(dir, factory(pieces = listOf("one", "two", "three", "four"), gate = gate), warmUp = false)
                var generation: org.edgepack.Generation? = null
                val worker = Thread { generation = model.generate("p", 10) }
                worker.start()
                while (synchronized(log) { log.none { ".generate(" in it } }) Thread.sleep(5)
                model.cancel()
                gate.countDown()
                worker.join()
                result(model, log, ", \"text\": ${quoteJson(generation!!.text)}, \"finish\": ${quoteJson(generation!!.finish)}")
            }

            "litert_npu_works" -> {
                val model = EdgeModel.load(dir, runtimes())
                ran(model, model.run("x"))
            }

            "litert_npu_fails_to_load" -> {
                val model = EdgeModel.load(dir, runtimes(failLoad = setOf("litert-lm/npu")))
                ran(model, model.run("x"))
            }

            "litert_gpu_fails_while_running" -> {
                // load's warm-up is the first generation; the request is the second
                val model = EdgeModel.load(dir, runtimes(failLoad = setOf("litert-lm/npu"), failGenerateAfter = mapOf("litert-lm/gpu" to 1)))
                ran(model, model.run("x"))
            }

            "litert_all_fail" -> {
                val fail = setOf("litert-lm/npu", "litert-lm/gpu", "litert-lm/cpu")
                val model = EdgeModel.load(dir, runtimes(failLoad = fail))
                ran(model, model.run("x"))
            }

            "litert_not_linked" -> {
                val model = EdgeModel.load(dir, runtimes(linked = setOf("executorch")))
                ran(model, model.run("x"))
            }

            "download" -> {
                val source = File(dir, "payload.bin")
                source.writeBytes(ByteArray(3000) { (it % 251).toByte() })
                val sha = org.edgepack.sha256Hex(source)
                val target = File(dir, "downloaded")
                val good = downloadVerified(source.toURI().toURL(), target, FileEntry("model.pte", 3000, sha))
                verifyFile(target, FileEntry("model.pte", 3000, sha))
                val tampered =
                    try {
                        downloadVerified(source.toURI().toURL(), target, FileEntry("other.pte", 3000, "0".repeat(64)))
                        "accepted"
                    } catch (e: ModelFileError) {
                        e.message ?: ""
                    }
                val leftovers = target.list()!!.sorted().joinToString(", ", "[", "]") { quoteJson(it) }
                "{\"good\": ${quoteJson(good.name)}, \"tampered\": ${quoteJson(tampered)}, \"files\": $leftovers}"
            }

            else -> {
                error("unknown scenario $scenario")
            }
        }
    println(out)
}
