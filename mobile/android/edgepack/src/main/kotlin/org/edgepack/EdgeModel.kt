package org.edgepack

import java.io.File
import java.util.concurrent.atomic.AtomicBoolean

/**
 * What EdgeModel needs from an LLM runtime. ExecuTorchEngine implements it over ExecuTorch's
 * LlmModule, LiteRtLmEngine over LiteRT-LM's Engine; keeping EdgeModel behind this interface makes its
 * fallback, streaming and cancel logic plain Kotlin that edgepack's tests run on the JVM with a
 * scripted engine.
 */
interface LlmEngine : AutoCloseable {
    /** Load the program and its weights; throw on any failure. */
    fun load()

    /**
     * Generate greedily from `prompt` until an eos token, `seqLen` total tokens, or stop(); block
     * until done. `onPiece` gets each token's text (an eos token's text included, as the runner
     * sends it), `onStats` the runner's statistics JSON once.
     */
    fun generate(
        prompt: String,
        numBos: Int,
        seqLen: Int,
        onPiece: (String) -> Unit,
        onStats: (String) -> Unit,
    )

    /** Ask a running generate() to return early (safe from any thread, including from onPiece). */
    fun stop()

    /** Forget the previous prompt's KV cache: every call is a fresh, single-turn prompt. */
    fun resetContext()

    /**
     * True when the runtime stops at the bundle's stop tokens without sending their text (LiteRT-LM):
     * a generation that ends by itself then ended at eos. ExecuTorch's runner sends the eos piece.
     */
    val endsSilentlyAtEos: Boolean get() = false
}

/** Opens an engine for one backend's model file (and the tokenizer.json, when the bundle has one). */
fun interface EngineFactory {
    fun open(
        model: BackendModel,
        modelDir: File,
        tokenizer: File?,
    ): LlmEngine
}

/**
 * Opens each backend with the factory of its runtime ("executorch", "litert-lm"). An app passes the
 * runtimes it links; a backend of another runtime fails to open, with that reason, and is skipped.
 */
class RuntimeFactories(
    private val byRuntime: Map<String, EngineFactory>,
) : EngineFactory {
    override fun open(
        model: BackendModel,
        modelDir: File,
        tokenizer: File?,
    ): LlmEngine {
        val factory = byRuntime[model.runtime] ?: throw ModelFileError("this app does not link the ${model.runtime} runtime")
        return factory.open(model, modelDir, tokenizer)
    }
}

/** One generation: the raw text, how it ended, and which backend produced it. */
data class Generation(
    val text: String,
    val tokens: Int,
    val tokensPerSecond: Double?,
    val backend: String,
    // "eos", "stop_string", "max_new_tokens", "cancelled" or "context_full"
    val finish: String,
)

/** An answer under the task contract: the parsed result plus the generation behind it. */
data class Answer(
    val result: ParseResult,
    val generation: Generation,
)

/**
 * The model of one edgepack android bundle: loads the first backend that works, in edgepack.json's
 * order (LiteRT-LM NPU, GPU, CPU, then the ExecuTorch .pte files, accelerators first, XNNPACK last),
 * renders prompts and parses answers under the contract.
 *
 * A backend that fails to load, fails its warm-up, or fails while generating is closed and the next
 * one is used; `backend` says which one runs and `skipped` why the earlier ones did not. One call
 * at a time: generate() and run() block, cancel() may come from any thread.
 */
class EdgeModel private constructor(
    val manifest: BundleManifest,
    private val modelDir: File,
    private val factory: EngineFactory,
    private var remaining: List<BackendModel>,
    val skipped: MutableList<String>,
) : AutoCloseable {
    private var engine: LlmEngine? = null
    private val cancelled = AtomicBoolean(false)

    /** The backend now serving requests ("xnnpack", "vulkan", "litert-lm/gpu", ...). */
    @Volatile
    var backend: String = ""
        private set

    val contract: Contract get() = manifest.contract

    companion object {
        /** Load the bundle in modelDir (edgepack.json + the files it lists), trying backends in order. */
        fun load(
            modelDir: File,
            factory: EngineFactory,
            warmUp: Boolean = true,
        ): EdgeModel = open(BundleManifest.parse(File(modelDir, "edgepack.json").readText()), modelDir, factory, warmUp)

        /** Open an already-parsed model of the bundle in modelDir (EdgeFleet's specialists), trying backends in order. */
        fun open(
            manifest: BundleManifest,
            modelDir: File,
            factory: EngineFactory,
            warmUp: Boolean = true,
        ): EdgeModel {
            val model = EdgeModel(manifest, modelDir, factory, manifest.backends, mutableListOf())
            model.openNext(warmUp)
            return model
        }
    }

    private fun openNext(warmUp: Boolean) {
        while (remaining.isNotEmpty()) {
            val candidate = remaining.first()
            remaining = remaining.drop(1)
            var opened: LlmEngine? = null
            try {
                opened = factory.open(candidate, modelDir, manifest.tokenizer?.let { File(modelDir, it) })
                opened.load()
                if (warmUp) {
                    generateOn(opened, candidate.label, "Hello", 1) {}
                }
                engine = opened
                backend = candidate.label
                return
            } catch (e: Exception) {
                skipped.add("${candidate.label}: ${e.message ?: e.javaClass.simpleName}")
            } catch (e: LinkageError) {
                // a delegate or accelerator whose native library is missing on this phone
                skipped.add("${candidate.label}: ${e.message ?: e.javaClass.simpleName}")
            }
            runCatching { opened?.close() }
        }
        throw ModelFileError("no backend could run this model: " + skipped.joinToString("; "))
    }

    /**
     * Generate from an already-rendered prompt, streaming each piece to onToken. If the backend fails
     * before anything was streamed, the next backend takes over and the prompt is run again.
     */
    fun generate(
        prompt: String,
        maxNewTokens: Int = contract.maxNewTokens,
        onToken: (String) -> Unit = {},
    ): Generation {
        while (true) {
            val current = engine ?: throw IllegalStateException("EdgeModel is closed")
            var streamed = false
            try {
                return generateOn(current, backend, prompt, maxNewTokens) {
                    streamed = true
                    onToken(it)
                }
            } catch (e: Exception) {
                skipped.add("$backend: ${e.message ?: e.javaClass.simpleName}")
                engine = null
                runCatching { current.close() }
                openNext(warmUp = true)
                if (streamed) throw e // the caller already showed part of an answer: let it decide
            }
        }
    }

    /** Render the contract's prompt for `input`, generate, and parse the answer under the contract. */
    fun run(
        input: String,
        instruction: String = "",
        onToken: (String) -> Unit = {},
    ): Answer {
        val generation = generate(renderPrompt(contract, input, instruction), contract.maxNewTokens, onToken)
        return Answer(parseOutput(contract, generation.text), generation)
    }

    /** Stop the running generation; it returns what it has, with finish = "cancelled". */
    fun cancel() {
        cancelled.set(true)
        engine?.stop()
    }

    override fun close() {
        engine?.close()
        engine = null
    }

    // The generation loop shared with the warm-up. The runner sends an eos token's text before it
    // stops; like the fp32 baseline (which stops before eos), that piece is not part of the answer.
    private fun generateOn(
        on: LlmEngine,
        name: String,
        prompt: String,
        maxNewTokens: Int,
        onToken: (String) -> Unit,
    ): Generation {
        cancelled.set(false)
        val out = StringBuilder()
        var tokens = 0
        var finish: String? = null
        var stats: String? = null
        on.resetContext()
        on.generate(prompt, manifest.numBos, manifest.maxContext, { piece ->
            if (finish != null) return@generate
            if (piece in manifest.eosPieces) {
                finish = "eos"
                return@generate
            }
            out.append(piece)
            tokens += 1
            onToken(piece)
            finish =
                when {
                    cancelled.get() -> "cancelled"
                    contract.stopStrings.any { it.isNotEmpty() && out.contains(it) } -> "stop_string"
                    tokens >= maxNewTokens -> "max_new_tokens"
                    else -> null
                }
            if (finish != null) on.stop()
        }, { stats = it })
        if (cancelled.get() && finish == null) finish = "cancelled"
        if (finish == null && on.endsSilentlyAtEos) finish = "eos"
        return Generation(out.toString(), tokens, stats?.let { decodeTokensPerSecond(it) }, name, finish ?: "context_full")
    }
}

/** Decode speed from the runner's stats JSON (generated tokens over the time after the prompt), or null. */
fun decodeTokensPerSecond(stats: String): Double? {
    val fields = (runCatching { parseJson(stats) }.getOrNull() as? JsonValue.Obj)?.fields ?: return null

    fun number(key: String): Double? =
        when (val v = fields[key]) {
            is JsonValue.Int -> v.value.toDouble()
            is JsonValue.Float -> v.value
            else -> null
        }
    val generated = number("generated_tokens") ?: return null
    val start = number("prompt_eval_end_ms") ?: return null
    val end = number("inference_end_ms") ?: return null
    return if (end > start) generated * 1000.0 / (end - start) else null
}
