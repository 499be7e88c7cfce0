/**
 * edgepack sample app: type an input, run the fine-tuned model on the phone, watch the answer
 * stream in, and see what the task contract made of it and how long it took.
 */

import React, { useEffect, useMemo, useRef, useState } from 'react';
import { Button, ScrollView, StyleSheet, Text, TextInput, View } from 'react-native';

import manifestJson from './edgepack.json';
import { LABELS, MODEL_NAME, MODEL_SOURCE, QUANT } from './src/buildInfo';
import {
  createBlobUtilFileSystem,
  EdgeModel,
  EdgeModelError,
  readManifest,
  type LoadProgress,
  type ModelFileSystem,
  type ModelSource,
  type RunResult,
} from './src/edgepack';

export interface AppProps {
  /** edgepack.json (default: the one edgepack wrote next to this file). */
  manifest?: unknown;
  source?: ModelSource;
  /** Default: react-native-blob-util (tests pass their own). */
  fileSystem?: ModelFileSystem;
}

function describeProgress(progress: LoadProgress): string {
  switch (progress.phase) {
    case 'download':
      return `Downloading model: ${Math.floor((100 * progress.receivedBytes) / progress.totalBytes)}%`;
    case 'unpack':
      return 'Unpacking model…';
    case 'verify':
      return 'Verifying sha256…';
    case 'load':
      return `Loading model: ${Math.round(progress.percent)}%`;
  }
}

function describeResult(result: RunResult): string {
  if (result.ok) {
    return typeof result.value === 'string' ? result.value : JSON.stringify(result.value, null, 2);
  }
  switch (result.error?.code) {
    case 'unknown_label':
      return `Not one of the labels: ${JSON.stringify(result.text)}`;
    case 'invalid_json':
      return `Not valid JSON: ${JSON.stringify(result.text)}`;
    case 'schema_mismatch':
      return `JSON does not match the schema at ${JSON.stringify(result.error.path)}`;
    default:
      return 'No answer';
  }
}

function describeError(error: unknown): string {
  if (error instanceof EdgeModelError) return `${error.code}: ${error.message}`;
  return error instanceof Error ? error.message : String(error);
}

export default function App({ manifest = manifestJson, source = MODEL_SOURCE, fileSystem }: AppProps) {
  const parsed = useMemo(() => {
    try {
      return { manifest: readManifest(manifest), error: null };
    } catch (error) {
      return { manifest: null, error: describeError(error) };
    }
  }, [manifest]);
  const [input, setInput] = useState('');
  const [instruction, setInstruction] = useState('');
  const [status, setStatus] = useState(parsed.error ?? 'Model not loaded yet');
  const [streamed, setStreamed] = useState('');
  const [result, setResult] = useState<RunResult | null>(null);
  const [running, setRunning] = useState(false);
  const model = useRef<EdgeModel | null>(null);

  useEffect(
    () => () => {
      void model.current?.release();
      model.current = null;
    },
    [],
  );

  const usesInstruction = parsed.manifest?.contract.prompt.template.includes('{instruction}') ?? false;

  const loadModel = async (): Promise<EdgeModel> => {
    if (model.current) return model.current;
    setStatus('Loading model…');
    model.current = await EdgeModel.load({
      manifest,
      source,
      fileSystem: fileSystem ?? createBlobUtilFileSystem(),
      onProgress: (progress) => setStatus(describeProgress(progress)),
    });
    return model.current;
  };

  const run = async () => {
    setRunning(true);
    setStreamed('');
    setResult(null);
    try {
      const loaded = await loadModel();
      setStatus('Running…');
      const answer = await loaded.run(input, instruction, { onToken: (_token, text) => setStreamed(text) });
      setResult(answer);
      setStatus(`Done (${answer.generation.stoppedBy})`);
    } catch (error) {
      setStatus(describeError(error));
    } finally {
      setRunning(false);
    }
  };

  const generation = result?.generation;
  return (
    <ScrollView contentContainerStyle={styles.container} keyboardShouldPersistTaps="handled">
      <Text style={styles.title} testID="model-name">{MODEL_NAME}</Text>
      <Text style={styles.caption}>{`${QUANT} GGUF on llama.rn`}</Text>
      {LABELS.length > 0 && (
        <View style={styles.labels}>
          {LABELS.map((label, index) => (
            <Text key={index} style={styles.label} testID={`label-${index}`}>{label}</Text>
          ))}
        </View>
      )}
      {usesInstruction && (
        <TextInput
          style={styles.input}
          placeholder="Instruction"
          value={instruction}
          onChangeText={setInstruction}
          testID="instruction"
        />
      )}
      <TextInput
        style={[styles.input, styles.multiline]}
        placeholder="Input"
        value={input}
        onChangeText={setInput}
        multiline
        testID="input"
      />
      <View style={styles.buttons}>
        <Button title="Run" onPress={() => void run()} disabled={running || parsed.manifest === null} testID="run" />
        <Button title="Cancel" onPress={() => void model.current?.cancel()} disabled={!running} testID="cancel" />
      </View>
      <Text style={styles.status} testID="status">{status}</Text>
      <Text style={styles.heading}>Answer</Text>
      <Text style={styles.answer} testID="streamed">{streamed}</Text>
      {result && (
        <>
          <Text style={styles.heading}>{result.ok ? 'Parsed by the contract' : 'Contract check failed'}</Text>
          <Text style={result.ok ? styles.answer : styles.error} testID="result">{describeResult(result)}</Text>
        </>
      )}
      {generation && (
        <Text style={styles.caption} testID="latency">
          {`${generation.latencyMs} ms total` +
            (generation.firstTokenMs === null ? '' : `, first token after ${generation.firstTokenMs} ms`) +
            `, ${generation.tokensPredicted} tokens` +
            (generation.tokensPerSecond === null ? '' : ` (${generation.tokensPerSecond.toFixed(1)} tokens/s)`)}
        </Text>
      )}
    </ScrollView>
  );
}

const styles = StyleSheet.create({
  container: { padding: 20, paddingTop: 60, gap: 10 },
  title: { fontSize: 22, fontWeight: '600' },
  caption: { color: '#666' },
  labels: { flexDirection: 'row', flexWrap: 'wrap', gap: 6 },
  label: { backgroundColor: '#eef', borderRadius: 6, paddingHorizontal: 8, paddingVertical: 2 },
  input: { borderWidth: 1, borderColor: '#ccc', borderRadius: 6, padding: 10 },
  multiline: { minHeight: 90, textAlignVertical: 'top' },
  buttons: { flexDirection: 'row', gap: 12 },
  status: { color: '#333' },
  heading: { fontWeight: '600', marginTop: 8 },
  answer: { fontFamily: 'Courier', fontSize: 15 },
  error: { fontFamily: 'Courier', fontSize: 15, color: '#b00020' },
});
