// Test harness (not shipped, not LiteRT-LM): a scripted stand-in for com.google.ai.edge.litertlm with the
// same signatures as the declared surface (tests/android/stubs/litertlm/LiteRtLm.kt), so the bridge's
// LiteRtLmEngine.kt runs on the JVM. It behaves as LiteRT-LM's Kotlin sources describe: initialize()
// throws when a backend cannot start, sendMessageAsync streams Message chunks to the callback from another
// thread and ends with onDone(), cancelProcess() ends it with onError(CancellationException), the engine's own
// stop tokens are never sent, and a response format on a conversation created without enableResponseFormat is
// refused with IllegalArgumentException. `FakeScript` (not LiteRT-LM API) says what fails and what to send, and
// records the response format each message was sent with (ResponseFormat.json does not parse the schema here).
@file:Suppress("unused")

package com.google.ai.edge.litertlm

import java.util.Collections
import java.util.concurrent.CancellationException
import kotlin.concurrent.thread

object FakeScript {
    var failInitialize: Set<String> = emptySet()
    var failSendAfter: Map<String, Int> = emptyMap()
    var chunks: List<String> = listOf("bill", "ing")
    val log: MutableList<String> = Collections.synchronizedList(mutableListOf())
    val responseFormats: MutableList<ResponseFormat?> = Collections.synchronizedList(mutableListOf())
}

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
        fun json(schema: String): ResponseFormat = ResponseFormat(Type.JSON_OBJECT, schema)

        @JvmStatic
        fun regex(pattern: String): ResponseFormat = ResponseFormat(Type.REGEX, pattern)
    }
}

class Message(
    private val text: String,
) {
    override fun toString(): String = text
}

interface MessageCallback {
    fun onMessage(message: Message)

    fun onDone()

    fun onError(throwable: Throwable)
}

class Conversation(
    private val backend: String,
    private val enableResponseFormat: Boolean,
    private val sends: () -> Int,
) : AutoCloseable {
    @Volatile private var cancelled = false

    fun sendMessageAsync(
        text: String,
        callback: MessageCallback,
        responseFormat: ResponseFormat? = null,
    ) {
        if (responseFormat != null && !enableResponseFormat) {
            throw IllegalArgumentException(
                "response_format cannot be used unless enableResponseFormat=True was passed to ConversationConfig.",
            )
        }
        FakeScript.responseFormats.add(responseFormat)
        val count = sends()
        FakeScript.log.add("$backend.send($count)")
        cancelled = false
        thread(name = "fake-litertlm-decode") {
            if (count > (FakeScript.failSendAfter[backend] ?: Int.MAX_VALUE)) {
                callback.onError(RuntimeException("Status Code: 13. Message: $backend decode failed"))
                return@thread
            }
            for (chunk in FakeScript.chunks) {
                Thread.sleep(2)
                if (cancelled) {
                    callback.onError(CancellationException("Process cancelled."))
                    return@thread
                }
                callback.onMessage(Message(chunk))
            }
            callback.onDone()
        }
    }

    fun cancelProcess() {
        FakeScript.log.add("$backend.cancelProcess")
        cancelled = true
    }

    override fun close() {
        FakeScript.log.add("$backend.conversation.close")
    }
}

class Engine(
    val engineConfig: EngineConfig,
) : AutoCloseable {
    private var initialized = false
    private var sends = 0

    fun isInitialized(): Boolean = initialized

    fun initialize() {
        val name = engineConfig.backend.name
        val detail = (engineConfig.backend as? Backend.NPU)?.let { " libs=${it.nativeLibraryDir}" } ?: ""
        FakeScript.log.add("$name.initialize$detail")
        if (name in FakeScript.failInitialize) throw IllegalStateException("Failed to create engine: $name unavailable")
        initialized = true
    }

    fun createConversation(conversationConfig: ConversationConfig = ConversationConfig()): Conversation {
        check(initialized) { "Engine is not initialized." }
        val sampler = conversationConfig.samplerConfig
        val template = conversationConfig.chatTemplate != null
        val constrained = conversationConfig.enableResponseFormat
        FakeScript.log.add(
            "${engineConfig.backend.name}.createConversation(topK=${sampler?.topK}, template=$template, responseFormat=$constrained)",
        )
        return Conversation(engineConfig.backend.name, constrained) { ++sends }
    }

    override fun close() {
        FakeScript.log.add("${engineConfig.backend.name}.close")
        initialized = false
    }
}
