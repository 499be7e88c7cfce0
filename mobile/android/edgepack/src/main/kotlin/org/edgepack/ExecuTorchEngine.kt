package org.edgepack

import org.pytorch.executorch.extension.llm.LlmCallback
import org.pytorch.executorch.extension.llm.LlmGenerationConfig
import org.pytorch.executorch.extension.llm.LlmModule
import java.io.File

/**
 * LlmEngine over ExecuTorch's LlmModule (org.pytorch:executorch-android, the version the .pte was
 * exported with: the Java API changed from int status codes to exceptions between 1.2 and 1.3).
 *
 * The only file of the bridge that touches ExecuTorch classes. LlmModule drives the same C++ text
 * runner edgepack ran every XNNPACK .pte in at build time.
 */
class ExecuTorchEngine(
    pte: File,
    ptd: File?,
    tokenizer: File,
) : LlmEngine {
    // Temperature 0: greedy decoding, as the build verified. The weights (.ptd) load beside the program.
    private val module: LlmModule =
        if (ptd != null) {
            LlmModule(pte.path, tokenizer.path, 0.0f, ptd.path)
        } else {
            LlmModule(pte.path, tokenizer.path, 0.0f)
        }

    override fun load() {
        module.load()
    }

    override fun generate(
        prompt: String,
        numBos: Int,
        seqLen: Int,
        onPiece: (String) -> Unit,
        onStats: (String) -> Unit,
    ) {
        // LlmModule.generate(prompt, config, callback) reads seqLen, echo, temperature, numBos and
        // numEos from the config (not maxNewTokens): EdgeModel counts pieces and calls stop().
        val config =
            LlmGenerationConfig
                .create()
                .echo(false)
                .seqLen(seqLen)
                .temperature(0.0f)
                .numBos(numBos)
                .numEos(0)
                .build()
        module.generate(
            prompt,
            config,
            object : LlmCallback {
                override fun onResult(result: String) = onPiece(result)

                override fun onStats(stats: String) = onStats(stats)
            },
        )
    }

    override fun stop() {
        module.stop()
    }

    override fun resetContext() {
        module.resetContext()
    }

    override fun close() {
        module.close()
    }

    companion object {
        /** The factory EdgeModel.load uses for ExecuTorch backends: one LlmModule per backend's .pte + .ptd. */
        val FACTORY =
            EngineFactory { model, modelDir, tokenizer ->
                val tokenizerFile = tokenizer ?: throw ModelFileError("edgepack.json names no tokenizer for ExecuTorch's runner")
                ExecuTorchEngine(File(modelDir, model.file), model.ptd?.let { File(modelDir, it) }, tokenizerFile)
            }
    }
}
