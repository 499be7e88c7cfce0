// Test harness (not shipped): the bridge's EdgeModel over its real LiteRtLmEngine, on the JVM against the
// scripted LiteRT-LM of FakeLiteRtLm.kt; prints what happened as JSON for tests/test_android.py.
//
//   java -cp probe.jar org.edgepack.probe.LiteRtLmProbeKt BUNDLE_DIR SCENARIO [SOC_MODEL]
package org.edgepack.probe

import com.google.ai.edge.litertlm.FakeScript
import org.edgepack.EdgeModel
import org.edgepack.LiteRtLmEngine
import org.edgepack.quoteJson
import java.io.File

fun main(args: Array<String>) {
    val dir = File(args[0])
    val factory = LiteRtLmEngine.factory("/data/app/org.edgepack.sample/lib/arm64", null, args.getOrNull(2))
    val extra =
        when (args[1]) {
            "fallback" -> {
                // no NPU bundle for this SoC in dir; the GPU cannot start
                FakeScript.failInitialize = setOf("GPU")
                val model = EdgeModel.load(dir, factory)
                val answer = model.run("x")
                val skipped = model.skipped.joinToString(", ", "[", "]") { quoteJson(it) }
                ", \"backend\": ${quoteJson(model.backend)}, \"skipped\": $skipped, \"value\": ${quoteJson(answer.result.text)}" +
                    ", \"finish\": ${quoteJson(answer.generation.finish)}"
            }

            "gpu_fails_while_running" -> {
                FakeScript.failInitialize = setOf("NPU")
                FakeScript.failSendAfter = mapOf("GPU" to 1) // the warm-up passes, the request fails
                val model = EdgeModel.load(dir, factory)
                val answer = model.run("x")
                val skipped = model.skipped.joinToString(", ", "[", "]") { quoteJson(it) }
                ", \"backend\": ${quoteJson(answer.generation.backend)}, \"skipped\": $skipped" +
                    ", \"value\": ${quoteJson(answer.result.text)}"
            }

            "stops" -> {
                FakeScript.failInitialize = setOf("NPU")
                FakeScript.chunks = listOf("a", "b", "c", "d", "e", "f")
                val model = EdgeModel.load(dir, factory)
                val byCount = model.generate("p", 2)
                val whole = model.generate("p", 100)
                ", \"max_new_tokens\": [${quoteJson(byCount.text)}, ${quoteJson(byCount.finish)}]" +
                    ", \"whole\": [${quoteJson(whole.text)}, ${quoteJson(whole.finish)}, ${whole.tokensPerSecond != null}]"
            }

            "response_formats" -> {
                // whatever edgepack.json's backends carry: the formats every message was sent with
                val model = EdgeModel.load(dir, factory)
                model.generate("p", 100)
                val formats =
                    synchronized(FakeScript.responseFormats) {
                        FakeScript.responseFormats.joinToString(", ", "[", "]") { format ->
                            format?.let { "[${quoteJson(it.type.name)}, ${quoteJson(it.schemaOrPattern)}]" } ?: "null"
                        }
                    }
                ", \"backend\": ${quoteJson(model.backend)}, \"response_formats\": $formats"
            }

            else -> {
                error("unknown scenario ${args[1]}")
            }
        }
    val log = synchronized(FakeScript.log) { FakeScript.log.joinToString(", ", "[", "]") { quoteJson(it) } }
    println("{\"log\": $log$extra}")
}
