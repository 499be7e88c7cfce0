// A declared API surface, not LiteRT-LM: the signatures of com.google.ai.edge.litertlm that the bridge's
// LiteRtLmEngine.kt uses, as LiteRT-LM's Kotlin sources declare them (github.com/google-ai-edge/LiteRT-LM,
// kotlin/java/com/google/ai/edge/litertlm/: Config.kt at 0d05de39b445225e4157d063cdec7784adb7df3c,
// Engine.kt at 35f580cfc23481e580571fa5a85d8baeb6f87ed4, Conversation.kt at
// 004ee26cc11cf7acc3a98498bfad8324b7729475; docs/api/kotlin/getting_started.md), written by hand so the
// bridge and the sample app compile on the JVM in edgepack's tests. Only what the bridge calls is declared.
// Constrained decoding: ConversationConfig.enableResponseFormat ("If true, initializes the constraint provider
// LLGuidance", Config.kt above) and Conversation.sendMessageAsync's `responseFormat: ResponseFormat? = null`
// (Conversation.kt above, also at 672cd6cacae39edae5b235ac9ff25fe650191ee9; it throws IllegalArgumentException
// for a response format on a conversation created without enableResponseFormat). Its optional parameters
// before responseFormat (extraContext, repetitionPenaltyConfig, noRepeatNgramConfig, suppressTokensConfig,
// maxOutputToken, thinkingConfig) and after it (disableSpeculativeDecoding) are left out: the bridge passes
// responseFormat by name and none of them. ResponseFormat is Google's ResponseFormat.kt (same folder), which
// the search index holds only from the fork valfrom/LiteRT-LM at 6cf029c41cecea10556f8fb7a8605a65c6641ac9;
// its `json(schema: Map<String, Any?>)` overload is left out. The v0.18.0 tag's own sources were not readable
// here; the names above are also in the Python litert-lm-api 0.18.1 the build runs (chat_template,
// SamplerConfig, cancel, ResponseFormat.regex/json with the same REGEX 1 / JSON_OBJECT 2 types). Bodies throw:
// nothing here runs a model. Keep in step with LITERTLM_ANDROID_VERSION (targets/android/litert_export.py).
@file:Suppress("UNUSED_PARAMETER", "unused")

package com.google.ai.edge.litertlm

sealed class Backend(
    val name: String,
) {
    data class CPU(
        val threadCount: Int? = null,
    ) : Backend("CPU")

    class GPU : Backend("GPU")

    data class NPU(
        val nativeLibraryDir: String = "",
    ) : Backend("NPU")
}

data class EngineConfig(
    val modelPath: String,
    val backend: Backend = Backend.CPU(),
    val visionBackend: Backend? = null,
    val audioBackend: Backend? = null,
    val maxNumTokens: Int? = null,
    val maxNumImages: Int? = null,
    val cacheDir: String? = null,
)

data class SamplerConfig(
    val topK: Int,
    val topP: Double,
    val temperature: Double,
    val seed: Int = 0,
)

data class ConversationConfig(
    val samplerConfig: SamplerConfig? = null,
    val maxOutputToken: Int? = null,
    val enableResponseFormat: Boolean = false,
    val chatTemplate: String? = null,
)

data class ResponseFormat(
    val type: Type,
    val schemaOrPattern: String,
) {
    enum class Type(
        val value: Int,
    ) {
        REGEX(1),
        JSON_OBJECT(2),
    }

    companion object {
        @JvmStatic
        fun json(schema: String): ResponseFormat = throw NotImplementedError("API surface stub")

        @JvmStatic
        fun regex(pattern: String): ResponseFormat = throw NotImplementedError("API surface stub")
    }
}

class Message {
    override fun toString(): String = throw NotImplementedError("API surface stub")
}

interface MessageCallback {
    fun onMessage(message: Message)

    fun onDone()

    fun onError(throwable: Throwable)
}

class Conversation : AutoCloseable {
    fun sendMessageAsync(
        text: String,
        callback: MessageCallback,
        responseFormat: ResponseFormat? = null,
    ): Unit = throw NotImplementedError("API surface stub")

    fun cancelProcess(): Unit = throw NotImplementedError("API surface stub")

    override fun close(): Unit = throw NotImplementedError("API surface stub")
}

class Engine(
    val engineConfig: EngineConfig,
) : AutoCloseable {
    fun isInitialized(): Boolean = throw NotImplementedError("API surface stub")

    fun initialize(): Unit = throw NotImplementedError("API surface stub")

    fun createConversation(conversationConfig: ConversationConfig = ConversationConfig()): Conversation =
        throw NotImplementedError("API surface stub")

    override fun close(): Unit = throw NotImplementedError("API surface stub")
}
