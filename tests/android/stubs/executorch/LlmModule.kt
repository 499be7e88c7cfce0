// A declared API surface, not ExecuTorch: signatures of org.pytorch:executorch-android 1.5 as its
// Kotlin sources declare them (extension/android/executorch_android/.../extension/llm/*.kt), written
// by hand so the bridge's ExecuTorchEngine.kt and the sample app compile on the JVM in edgepack's
// tests. Bodies throw: nothing here runs a model. Keep in step with EXECUTORCH_VERSION.
@file:Suppress("UNUSED_PARAMETER", "unused")

package org.pytorch.executorch.extension.llm

import java.io.Closeable

interface LlmCallback {
    fun onResult(result: String)

    fun onStats(stats: String) {}

    fun onError(
        errorCode: Int,
        message: String,
    ) {}
}

class LlmGenerationConfig private constructor(
    val echo: Boolean,
    val maxNewTokens: Int,
    val warming: Boolean,
    val seqLen: Int,
    val temperature: Float,
    val numBos: Int,
    val numEos: Int,
) {
    companion object {
        @JvmStatic fun create(): Builder = Builder()
    }

    class Builder internal constructor() {
        private var echo: Boolean = true
        private var maxNewTokens: Int = -1
        private var warming: Boolean = false
        private var seqLen: Int = -1
        private var temperature: Float = 0.8f
        private var numBos: Int = 0
        private var numEos: Int = 0

        fun echo(echo: Boolean): Builder = apply { this.echo = echo }

        fun maxNewTokens(maxNewTokens: Int): Builder = apply { this.maxNewTokens = maxNewTokens }

        fun warming(warming: Boolean): Builder = apply { this.warming = warming }

        fun seqLen(seqLen: Int): Builder = apply { this.seqLen = seqLen }

        fun temperature(temperature: Float): Builder = apply { this.temperature = temperature }

        fun numBos(numBos: Int): Builder = apply { this.numBos = numBos }

        fun numEos(numEos: Int): Builder = apply { this.numEos = numEos }

        fun build(): LlmGenerationConfig = LlmGenerationConfig(echo, maxNewTokens, warming, seqLen, temperature, numBos, numEos)
    }
}

class LlmModule private constructor(
    modelType: Int,
    modulePath: String,
    tokenizerPath: String,
    temperature: Float,
    dataFiles: List<String>,
    numBos: Int,
    numEos: Int,
    loadMode: Int,
) : Closeable {
    constructor(modulePath: String, tokenizerPath: String, temperature: Float) :
        this(MODEL_TYPE_TEXT, modulePath, tokenizerPath, temperature, emptyList(), 0, 0, 0)

    constructor(modulePath: String, tokenizerPath: String, temperature: Float, dataPath: String) :
        this(MODEL_TYPE_TEXT, modulePath, tokenizerPath, temperature, listOf(dataPath), 0, 0, 0)

    override fun close(): Unit = throw NotImplementedError("API surface stub")

    fun generate(
        prompt: String,
        llmCallback: LlmCallback,
    ): Unit = throw NotImplementedError("API surface stub")

    fun generate(
        prompt: String,
        seqLen: Int,
        llmCallback: LlmCallback,
    ): Unit = throw NotImplementedError("API surface stub")

    fun generate(
        prompt: String,
        config: LlmGenerationConfig,
        llmCallback: LlmCallback,
    ): Unit = throw NotImplementedError("API surface stub")

    fun resetContext(): Unit = throw NotImplementedError("API surface stub")

    fun stop(): Unit = throw NotImplementedError("API surface stub")

    fun load(): Unit = throw NotImplementedError("API surface stub")

    companion object {
        const val MODEL_TYPE_TEXT = 1
    }
}
