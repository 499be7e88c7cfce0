package org.edgepack

import java.io.File
import java.io.IOException
import java.net.URL
import java.security.MessageDigest

/*
 * The android bundle's edgepack.json, read into what the bridge needs, and the model files it names:
 * size and sha256 checks, and an optional download that never leaves a partial or wrong file behind.
 * Pure JVM code (java.io, java.net, java.security): it runs unchanged in edgepack's JVM tests.
 */

/** The runtimes a bundle's backends name in edgepack.json ("runtime"). */
const val EXECUTORCH = "executorch"
const val LITERT_LM = "litert-lm"

/**
 * The constraint a LiteRT-LM engine decodes under (edgepack.json's `response_format`), exactly as the build's
 * engine applied it when it verified the bundle: `type` "regex" or "json" (the names of LiteRT-LM's
 * `ResponseFormat.regex` / `ResponseFormat.json`) and the pattern or JSON-schema text to pass them. Carried as data
 * so the phone asks for the very regex or schema the build measured, not one the bridge derives again.
 */
data class DecodingConstraint(
    val type: String,
    val schemaOrPattern: String,
) {
    companion object {
        const val REGEX = "regex"
        const val JSON = "json"
    }
}

/**
 * One model the app may run: a runtime, one of its backends, and its files (`file` is the .pte or the
 * .litertlm, `ptd` the .pte's weights). `experimental` ones were not executed at build time; a LiteRT-LM
 * bundle carries `chatTemplate`, the template its engine applies to the already-rendered prompt, and
 * `responseFormat`, the constraint of a constrained contract (null: decode unconstrained).
 */
data class BackendModel(
    val runtime: String,
    val backend: String,
    val file: String,
    val ptd: String?,
    val experimental: Boolean,
    val verification: String,
    val chatTemplate: String? = null,
    val responseFormat: DecodingConstraint? = null,
) {
    /** How EdgeModel names it in `backend` and `skipped`: "xnnpack", "vulkan", "litert-lm/gpu", ... */
    val label: String get() = if (runtime == EXECUTORCH) backend else "$runtime/$backend"
}

/** A file of the bundle as edgepack.json lists it. */
data class FileEntry(
    val path: String,
    val bytes: Long,
    val sha256: String,
)

/** What the bridge reads from the android target's edgepack.json. */
data class BundleManifest(
    val name: String,
    val backends: List<BackendModel>,
    // tokenizer.json for ExecuTorch's runner; null when only LiteRT-LM ships (its bundle holds the tokenizer)
    val tokenizer: String?,
    val numBos: Int,
    val maxContext: Int,
    val eosPieces: List<String>,
    val contract: Contract,
    val files: Map<String, FileEntry>,
) {
    companion object {
        /** Parse edgepack.json's text; a damaged or foreign file raises ContractFormatError naming the field. */
        fun parse(text: String): BundleManifest {
            val root = root(text)
            return fromSection(str(obj(root, "model"), "name"), root, root)
        }

        /**
         * The models a bundle offers by name: a fleet's specialists (edgepack.json's `specialists`, each with
         * its own programs, runner settings and contract over the bundle's shared files), or the one model of
         * any other bundle under its name.
         */
        fun parseFleet(text: String): Map<String, BundleManifest> {
            val root = root(text)
            val specialists = root.fields["specialists"] ?: return mapOf(str(obj(root, "model"), "name") to parse(text))
            val items = (specialists as? JsonValue.Arr)?.items ?: throw ContractFormatError("edgepack.json: \"specialists\" must be a list")
            if (items.isEmpty()) throw ContractFormatError("edgepack.json: specialists is empty")
            val byName = LinkedHashMap<String, BundleManifest>()
            for (item in items) {
                val entry = item as? JsonValue.Obj ?: throw ContractFormatError("edgepack.json: specialists[] must hold objects")
                val name = str(entry, "name")
                if (byName.put(name, fromSection(name, entry, root)) != null) {
                    throw ContractFormatError("edgepack.json: specialist \"$name\" is listed twice")
                }
            }
            return byName
        }

        private fun root(text: String): JsonValue.Obj =
            parseJson(text) as? JsonValue.Obj ?: throw ContractFormatError("edgepack.json: not a JSON object")

        // `section` holds the model's runner settings, backends and contract (the document itself, or a fleet's
        // specialist); `root` the files and tokenizer every model of the bundle shares.
        private fun fromSection(
            name: String,
            section: JsonValue.Obj,
            root: JsonValue.Obj,
        ): BundleManifest {
            val runner = obj(section, "runner")
            val backends =
                arr(section, "backends").map { item ->
                    val entry = item as? JsonValue.Obj ?: throw ContractFormatError("edgepack.json: backends[] must hold objects")
                    // Bundles from before LiteRT-LM list ExecuTorch backends only, without "runtime".
                    val runtime = (entry.fields["runtime"] as? JsonValue.Str)?.value ?: EXECUTORCH
                    val fileKey =
                        when (runtime) {
                            EXECUTORCH -> "pte"
                            LITERT_LM -> "litertlm"
                            else -> throw ContractFormatError("edgepack.json: backends[] runtime \"$runtime\" is unknown")
                        }
                    BackendModel(
                        runtime = runtime,
                        backend = str(entry, "backend"),
                        file = str(entry, fileKey),
                        ptd = (entry.fields["ptd"] as? JsonValue.Str)?.value,
                        experimental = (entry.fields["experimental"] as? JsonValue.Bool)?.value ?: false,
                        verification = str(entry, "verification"),
                        chatTemplate = (entry.fields["chat_template"] as? JsonValue.Str)?.value,
                        responseFormat = responseFormat(entry.fields["response_format"]),
                    )
                }
            if (backends.isEmpty()) throw ContractFormatError("edgepack.json: backends is empty")
            val files =
                arr(root, "files").associate { item ->
                    val entry = item as? JsonValue.Obj ?: throw ContractFormatError("edgepack.json: files[] must hold objects")
                    val path = str(entry, "path")
                    path to FileEntry(path, int(entry, "bytes"), str(entry, "sha256"))
                }
            return BundleManifest(
                name = name,
                backends = backends,
                tokenizer = (root.fields["tokenizer"] as? JsonValue.Str)?.value,
                numBos = int(runner, "num_bos").toInt(),
                maxContext = int(runner, "max_context").toInt(),
                eosPieces = arr(runner, "eos_pieces").map { (it as? JsonValue.Str)?.value ?: "" },
                contract = contractFromJson(section.fields["contract"] ?: JsonValue.Null),
                files = files,
            )
        }

        // Absent or null: an unconstrained contract (and every bundle from before constrained decoding on the phone).
        private fun responseFormat(value: JsonValue?): DecodingConstraint? {
            if (value == null || value is JsonValue.Null) return null
            val entry = value as? JsonValue.Obj ?: throw ContractFormatError("edgepack.json: \"response_format\" must be an object or null")
            val type = str(entry, "type")
            if (type != DecodingConstraint.REGEX && type != DecodingConstraint.JSON) {
                throw ContractFormatError("edgepack.json: response_format type \"$type\" is unknown (regex or json)")
            }
            return DecodingConstraint(type, str(entry, "schema_or_pattern"))
        }

        private fun obj(
            parent: JsonValue.Obj,
            key: String,
        ): JsonValue.Obj = parent.fields[key] as? JsonValue.Obj ?: throw ContractFormatError("edgepack.json: \"$key\" must be an object")

        private fun arr(
            parent: JsonValue.Obj,
            key: String,
        ): List<JsonValue> =
            (parent.fields[key] as? JsonValue.Arr)?.items ?: throw ContractFormatError("edgepack.json: \"$key\" must be a list")

        private fun str(
            parent: JsonValue.Obj,
            key: String,
        ): String = (parent.fields[key] as? JsonValue.Str)?.value ?: throw ContractFormatError("edgepack.json: \"$key\" must be a string")

        private fun int(
            parent: JsonValue.Obj,
            key: String,
        ): Long =
            (parent.fields[key] as? JsonValue.Int)?.value?.toLong()
                ?: throw ContractFormatError("edgepack.json: \"$key\" must be an integer")
    }
}

/** A model file is missing, has the wrong size or hash, or could not be downloaded. */
class ModelFileError(
    message: String,
) : IOException(message)

/** Lowercase hex sha256 of a file, read in 1 MiB blocks (model files are hundreds of MB). */
fun sha256Hex(file: File): String {
    val digest = MessageDigest.getInstance("SHA-256")
    file.inputStream().use { input ->
        val buffer = ByteArray(1 shl 20)
        while (true) {
            val read = input.read(buffer)
            if (read < 0) break
            digest.update(buffer, 0, read)
        }
    }
    return digest.digest().joinToString("") { "%02x".format(it) }
}

/** Check that dir/entry.path exists with the listed size and sha256; raise ModelFileError saying what differs. */
fun verifyFile(
    dir: File,
    entry: FileEntry,
) {
    val file = File(dir, entry.path)
    if (!file.isFile) throw ModelFileError("${file.path} is missing (push it with adb or download it first)")
    if (file.length() != entry.bytes) {
        throw ModelFileError("${file.path} has ${file.length()} bytes, edgepack.json lists ${entry.bytes} (incomplete copy?)")
    }
    val actual = sha256Hex(file)
    if (actual != entry.sha256) throw ModelFileError("${file.path}: sha256 $actual differs from edgepack.json's ${entry.sha256}")
}

/**
 * Download `url` to dir/entry.path unless a verified copy is already there.
 *
 * Bytes go to a temporary file beside the target, hashed as they arrive; only a file whose size
 * and sha256 match edgepack.json is renamed into place, so an interrupted or tampered download
 * never looks like a model. `onProgress` gets (bytes so far, total).
 */
fun downloadVerified(
    url: URL,
    dir: File,
    entry: FileEntry,
    onProgress: (Long, Long) -> Unit = { _, _ -> },
): File {
    val target = File(dir, entry.path)
    if (target.isFile && target.length() == entry.bytes && sha256Hex(target) == entry.sha256) return target
    dir.mkdirs()
    val partial = File(dir, entry.path + ".partial")
    val digest = MessageDigest.getInstance("SHA-256")
    var received = 0L
    try {
        url.openStream().use { input ->
            partial.outputStream().use { output ->
                val buffer = ByteArray(1 shl 20)
                while (true) {
                    val read = input.read(buffer)
                    if (read < 0) break
                    received += read
                    if (received > entry.bytes) throw ModelFileError("$url sends more than the ${entry.bytes} bytes edgepack.json lists")
                    digest.update(buffer, 0, read)
                    output.write(buffer, 0, read)
                    onProgress(received, entry.bytes)
                }
            }
        }
        val actual = digest.digest().joinToString("") { "%02x".format(it) }
        if (received != entry.bytes || actual != entry.sha256) {
            throw ModelFileError("$url: got $received bytes with sha256 $actual, expected ${entry.bytes} bytes with ${entry.sha256}")
        }
        if (!partial.renameTo(target)) throw ModelFileError("cannot move ${partial.path} to ${target.path}")
        return target
    } finally {
        partial.delete()
    }
}
