package org.edgepack

import java.io.File

/**
 * The specialists of one edgepack android bundle: LoRA fine-tunes of one base, whose weights (.ptd) ship once
 * beside a small program (.pte) per specialist holding its adapter. `use(name)` opens that specialist as an
 * EdgeModel (its program over the shared weights, its own contract and runner settings) and closes the one
 * before: one specialist is resident at a time, and switching costs one program load, not a copy of the base.
 *
 * Any other bundle is a fleet of one, under its model's name, so an app can always go through EdgeFleet.
 * One call at a time, as for EdgeModel.
 */
class EdgeFleet private constructor(
    private val modelDir: File,
    private val factory: EngineFactory,
    val specialists: Map<String, BundleManifest>,
) : AutoCloseable {
    private var current: EdgeModel? = null

    /** The name of the open specialist, or null before the first use(). */
    var active: String? = null
        private set

    /** The specialists' names, in edgepack.json's order. */
    val names: List<String> get() = specialists.keys.toList()

    companion object {
        /** Read the bundle's edgepack.json in modelDir; nothing is loaded until use(). */
        fun load(
            modelDir: File,
            factory: EngineFactory,
        ): EdgeFleet = EdgeFleet(modelDir, factory, BundleManifest.parseFleet(File(modelDir, "edgepack.json").readText()))
    }

    /** The files every specialist's CPU backend needs (the shared weights and tokenizer once), to check or download. */
    fun requiredFiles(): List<FileEntry> {
        val names = mutableListOf<String>()
        for (manifest in specialists.values) {
            manifest.tokenizer?.let { names.add(it) }
            for (backend in manifest.backends.filter { !it.experimental }) {
                names.add(backend.file)
                backend.ptd?.let { names.add(it) }
            }
        }
        val files = specialists.values.first().files
        return names.distinct().mapNotNull { files[it] }
    }

    /** Open specialist `name` (closing the one open before), or return it if it is the open one. */
    fun use(
        name: String,
        warmUp: Boolean = true,
    ): EdgeModel {
        val manifest =
            specialists[name]
                ?: throw IllegalArgumentException("no specialist \"$name\" in this bundle (it has ${names.joinToString()})")
        current?.let { if (active == name) return it }
        close()
        val opened = EdgeModel.open(manifest, modelDir, factory, warmUp)
        current = opened
        active = name
        return opened
    }

    override fun close() {
        current?.close()
        current = null
        active = null
    }
}
