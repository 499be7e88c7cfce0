package org.edgepack.sample

import android.app.Activity
import android.os.Bundle
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.TextView
import org.edgepack.Answer
import org.edgepack.EdgeFleet
import org.edgepack.EdgeModel
import org.edgepack.downloadVerified
import org.edgepack.verifyFile
import java.io.File
import java.net.URL
import kotlin.concurrent.thread

/**
 * Loads the model from the app's storage, runs one input under the task contract, and shows the
 * answer, the decode speed and which backend ran (LiteRT-LM on the NPU, GPU or CPU when the bundle
 * has a .litertlm, an accelerator .pte, then XNNPACK on the CPU: the first that loads and runs).
 * A fleet's bundle offers a button per specialist: pressing one opens that specialist (its program
 * over the shared base weights) in place of the one open before.
 */
class MainActivity : Activity() {
    @Volatile
    private var fleet: EdgeFleet? = null

    @Volatile
    private var model: EdgeModel? = null
    private var specialist: Specialist = BundleConfig.SPECIALISTS.first()
    private lateinit var input: EditText
    private lateinit var answer: TextView
    private lateinit var status: TextView
    private lateinit var runButton: Button
    private lateinit var cancelButton: Button

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        title = BundleConfig.MODEL_NAME
        input = EditText(this)
        input.setText(specialist.sampleInput)
        runButton = Button(this)
        runButton.text = "Run"
        runButton.isEnabled = false
        runButton.setOnClickListener { runInput() }
        cancelButton = Button(this)
        cancelButton.text = "Cancel"
        cancelButton.isEnabled = false
        cancelButton.setOnClickListener { model?.cancel() }
        status = TextView(this)
        answer = TextView(this)
        val column = LinearLayout(this)
        column.orientation = LinearLayout.VERTICAL
        if (BundleConfig.SPECIALISTS.size > 1) {
            for (choice in BundleConfig.SPECIALISTS) {
                val pick = Button(this)
                pick.text = choice.name
                pick.setOnClickListener { switchTo(choice) }
                column.addView(pick)
            }
        }
        for (view in listOf(input, runButton, cancelButton, status, answer)) {
            column.addView(view)
        }
        val scroll = ScrollView(this)
        scroll.addView(column)
        setContentView(scroll)
        loadModel()
    }

    override fun onDestroy() {
        fleet?.close()
        fleet = null
        model = null
        super.onDestroy()
    }

    /** Where `adb push` puts the model files: /sdcard/Android/data/<applicationId>/files/model. */
    private fun modelDir(): File = File(getExternalFilesDir(null), BundleConfig.MODEL_FOLDER)

    private fun show(text: String) {
        runOnUiThread { status.text = text }
    }

    private fun loadModel() {
        val dir = modelDir()
        show("Checking the model files in ${dir.path} ...")
        thread(name = "edgepack-load") {
            try {
                dir.mkdirs()
                val manifestText = assets.open("edgepack.json").use { it.readBytes().decodeToString() }
                File(dir, "edgepack.json").writeText(manifestText)
                val loadedFleet = EdgeFleet.load(dir, bundleEngines(this))
                fleet = loadedFleet
                // The files of the backends that ran at build time (the CPU ones) and the tokenizer must be
                // there; an accelerator's file that was not pushed is simply skipped by EdgeModel's fallback.
                for (entry in loadedFleet.requiredFiles()) {
                    if (BundleConfig.DOWNLOAD_BASE_URL.isEmpty()) {
                        verifyFile(dir, entry)
                    } else {
                        val url = URL(BundleConfig.DOWNLOAD_BASE_URL.trimEnd('/') + "/" + entry.path)
                        downloadVerified(url, dir, entry) { done, total -> show("Downloading ${entry.path}: ${done * 100 / total}%") }
                    }
                }
                openSpecialist(loadedFleet, specialist)
            } catch (e: Exception) {
                show("Cannot load the model: ${e.message}")
            }
        }
    }

    // On a background thread: open `choice` (closing the specialist open before) and say which backend runs it.
    private fun openSpecialist(
        loadedFleet: EdgeFleet,
        choice: Specialist,
    ) {
        show("Loading ${choice.name} ...")
        model = null
        val loaded = loadedFleet.use(choice.name)
        model = loaded
        specialist = choice
        val fallback = if (loaded.skipped.isEmpty()) "" else " (skipped: ${loaded.skipped.joinToString("; ")})"
        runOnUiThread {
            status.text = "${choice.name} ready on ${loaded.backend}$fallback"
            runButton.isEnabled = true
        }
    }

    private fun switchTo(choice: Specialist) {
        val loadedFleet = fleet ?: return
        if (choice.name == loadedFleet.active) return
        runButton.isEnabled = false
        input.setText(choice.sampleInput)
        answer.text = ""
        thread(name = "edgepack-switch") {
            try {
                openSpecialist(loadedFleet, choice)
            } catch (e: Exception) {
                show("Cannot load ${choice.name}: ${e.message}")
            }
        }
    }

    private fun runInput() {
        val loaded = model ?: return
        val text = input.text.toString()
        answer.text = ""
        runButton.isEnabled = false
        cancelButton.isEnabled = true
        thread(name = "edgepack-run") {
            try {
                val result = loaded.run(text, specialist.instruction) { piece -> runOnUiThread { answer.append(piece) } }
                runOnUiThread {
                    answer.text = result.result.text
                    status.text = describe(result)
                }
            } catch (e: Exception) {
                show("Generation failed: ${e.message}")
            } finally {
                runOnUiThread {
                    runButton.isEnabled = true
                    cancelButton.isEnabled = false
                }
            }
        }
    }

    private fun describe(result: Answer): String {
        val generation = result.generation
        val speed = generation.tokensPerSecond?.let { "%.1f tokens/s".format(it) } ?: "speed n/a"
        val error = result.result.error
        val verdict = if (error == null) "valid ${specialist.task} answer" else "contract violation: ${error.code} ${error.path}"
        return "$verdict, $speed, ${generation.tokens} tokens, ran on ${generation.backend} (${generation.finish})"
    }
}
