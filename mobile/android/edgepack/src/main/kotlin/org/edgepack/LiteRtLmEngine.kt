package org.edgepack

import com.google.ai.edge.litertlm.Backend
import com.google.ai.edge.litertlm.Conversation
import com.google.ai.edge.litertlm.ConversationConfig
import com.google.ai.edge.litertlm.Engine
import com.google.ai.edge.litertlm.EngineConfig
import com.google.ai.edge.litertlm.Message
import com.google.ai.edge.litertlm.MessageCallback
import com.google.ai.edge.litertlm.ResponseFormat
import com.google.ai.edge.litertlm.SamplerConfig
import java.io.File
import java.util.concurrent.CancellationException
import java.util.concurrent.CountDownLatch
import kotlin.concurrent.thread

/**
 * LlmEngine over LiteRT-LM's Engine and Conversation (com.google.ai.edge.litertlm:litertlm-android,
 * the 0.18 line edgepack's build ran the same bundle with on the host CPU). The only file of the bridge
 * that touches LiteRT-LM classes; the app links it only when the build ships a .litertlm.
 *
 * How EdgeModel's contract maps onto a conversation-based API:
 * - the prompt is already rendered under the task contract: the conversation's chat template
 *   (edgepack.json's `chat_template`, the one the build verified with) passes it through verbatim,
 *   and the engine adds the bundle's start token itself, so `numBos` is not used;
 * - the engine stops at the bundle's stop tokens without sending them (`endsSilentlyAtEos`);
 * - `seqLen` is the bundle's own KV cache (exported from the contract's context length), not set here;
 * - stop strings and max new tokens stay EdgeModel's: it counts the streamed chunks and calls stop(),
 *   which is Conversation.cancelProcess(); the cancelled call then ends with a CancellationException,
 *   read as a normal early end;
 * - each generate() runs in a fresh conversation (resetContext closes the previous one): a cancelled
 *   conversation keeps its partial turn in the KV cache, and every prompt is single-turn anyway;
 * - a constrained contract (labels, or a JSON schema) decodes under LiteRT-LM's constrained decoding, as the
 *   build's engine did when it measured the contract's validity: `constraint` is edgepack.json's
 *   `response_format` (that regex or schema text, not one derived here), the conversation is created with
 *   `enableResponseFormat` (LiteRT-LM then sets up LLGuidance, the provider the build used) and every message is
 *   sent with it. Without one (free text, or an unconstrained contract) the decode is unconstrained.
 */
class LiteRtLmEngine(
    private val bundle: File,
    backend: Backend,
    private val chatTemplate: String?,
    cacheDir: String?,
    constraint: DecodingConstraint? = null,
) : LlmEngine {
    // Built once, first: ResponseFormat.json parses the schema text, so a damaged one fails opening this backend
    // (EdgeModel keeps the reason in `skipped`), not a generation.
    private val responseFormat: ResponseFormat? =
        constraint?.let {
            when (it.type) {
                DecodingConstraint.REGEX -> ResponseFormat.regex(it.schemaOrPattern)
                DecodingConstraint.JSON -> ResponseFormat.json(it.schemaOrPattern)
                else -> throw ModelFileError("LiteRT-LM has no response format \"${it.type}\"")
            }
        }
    private val engine = Engine(EngineConfig(modelPath = bundle.path, backend = backend, cacheDir = cacheDir))
    private var conversation: Conversation? = null

    @Volatile
    private var stopping = false

    // The thread LiteRT-LM calls the MessageCallback on (EdgeModel calls stop() from there).
    @Volatile
    private var callbackThread: Thread? = null

    override val endsSilentlyAtEos: Boolean get() = true

    override fun load() {
        // An NPU bundle is compiled for one SoC and is not built by edgepack: say so instead of a native error.
        if (!bundle.isFile) {
            throw ModelFileError("${bundle.path} is missing (an NPU bundle is compiled per SoC: npu/README.md)")
        }
        engine.initialize() // seconds for a large model: EdgeModel.load runs off the main thread
    }

    override fun generate(
        prompt: String,
        numBos: Int,
        seqLen: Int,
        onPiece: (String) -> Unit,
        onStats: (String) -> Unit,
    ) {
        val current = conversation ?: newConversation().also { conversation = it }
        val done = CountDownLatch(1)
        var failure: Throwable? = null
        var chunks = 0
        var firstChunkMs = 0L
        val startMs = System.currentTimeMillis()
        stopping = false
        current.sendMessageAsync(
            prompt,
            object : MessageCallback {
                override fun onMessage(message: Message) {
                    callbackThread = Thread.currentThread()
                    if (chunks == 0) firstChunkMs = System.currentTimeMillis()
                    chunks += 1
                    onPiece(message.toString())
                }

                override fun onDone() = done.countDown()

                override fun onError(throwable: Throwable) {
                    if (!(throwable is CancellationException && stopping)) failure = throwable
                    done.countDown()
                }
            },
            // By name: LiteRT-LM declares six other optional parameters before it.
            responseFormat = responseFormat,
        )
        done.await()
        failure?.let { throw it as? Exception ?: RuntimeException(it) }
        // The stats JSON ExecuTorch's runner sends, measured here: chunks after the first over their time.
        if (chunks > 1) {
            val endMs = System.currentTimeMillis()
            onStats(
                "{\"generated_tokens\": ${chunks - 1}, \"prompt_eval_end_ms\": ${firstChunkMs - startMs}, " +
                    "\"inference_end_ms\": ${endMs - startMs}}",
            )
        }
    }

    override fun stop() {
        stopping = true
        val current = conversation ?: return
        // EdgeModel stops from onPiece, on the engine's callback thread. Whether cancelProcess() waits for
        // the decode loop is not documented: from that thread, cancel from another so it never waits on itself.
        if (Thread.currentThread() === callbackThread) {
            thread(name = "edgepack-litert-cancel") { runCatching { current.cancelProcess() } }
        } else {
            current.cancelProcess()
        }
    }

    override fun resetContext() {
        conversation?.close()
        conversation = null
    }

    override fun close() {
        runCatching { resetContext() }
        if (engine.isInitialized()) engine.close()
    }

    // Greedy decoding (top-k 1), as the build's engine run; a conversation refuses a response format unless it
    // was created with enableResponseFormat.
    private fun newConversation(): Conversation =
        engine.createConversation(
            ConversationConfig(
                samplerConfig = SamplerConfig(topK = 1, topP = 1.0, temperature = 0.0),
                enableResponseFormat = responseFormat != null,
                chatTemplate = chatTemplate,
            ),
        )

    companion object {
        /** The placeholder an NPU backend's file name holds for the SoC it was compiled for (edgepack.json). */
        const val SOC_PLACEHOLDER = "{soc}"

        /**
         * The NPU bundle for this phone: edgepack.json names it with SOC_PLACEHOLDER ("model-npu-{soc}.litertlm"),
         * the SoC as Build.SOC_MODEL reports it, lower case ("model-npu-sm8750.litertlm", as npu/compile_npu.py
         * writes it). A phone that does not report its SoC (before Android 12) has none.
         */
        fun npuBundleFile(
            pattern: String,
            socModel: String?,
        ): String {
            if (!pattern.contains(SOC_PLACEHOLDER)) return pattern
            if (socModel.isNullOrBlank() || socModel == "unknown") {
                throw ModelFileError("this phone does not report its SoC model, so no NPU bundle can be chosen")
            }
            return pattern.replace(SOC_PLACEHOLDER, socModel.lowercase())
        }

        /**
         * The factory EdgeModel.load uses for LiteRT-LM backends: "npu" (the bundle compiled for `socModel`,
         * `Build.SOC_MODEL` on Android; libraries from nativeLibraryDir, `context.applicationInfo.nativeLibraryDir`),
         * "gpu" (OpenCL, declared in the manifest) or "cpu".
         */
        fun factory(
            nativeLibraryDir: String,
            cacheDir: String?,
            socModel: String?,
        ): EngineFactory =
            EngineFactory { model, modelDir, _ ->
                val (backend, file) =
                    when (model.backend) {
                        "npu" -> Backend.NPU(nativeLibraryDir = nativeLibraryDir) to npuBundleFile(model.file, socModel)
                        "gpu" -> Backend.GPU() to model.file
                        "cpu" -> Backend.CPU() to model.file
                        else -> throw ModelFileError("LiteRT-LM has no backend \"${model.backend}\"")
                    }
                LiteRtLmEngine(File(modelDir, file), backend, model.chatTemplate, cacheDir, model.responseFormat)
            }
    }
}
