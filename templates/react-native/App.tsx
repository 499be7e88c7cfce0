/**
 * edgepack sample app: type an input, run the fine-tuned model on the phone, watch the answer
 * stream in, and see what the task contract made of it and how long it took. For a fleet
 * (edgepack.json lists specialists), pick the specialist first: the base model is loaded once and
 * each run applies the picked specialist's adapter and answers under its contract.
 */

import React, { useEffect, useMemo, useRef, useState } from 'react';
import { Button, Pressable, ScrollView, StyleSheet, Text, TextInput, View } from 'react-native';

import manifestJson from './edgepack.json';
import { FLEET_SOURCE, MODEL_NAME, MODEL_SOURCE, QUANT } from './src/buildInfo';
import {
  createBlobUtilFileSystem,
  EdgeFleet,
  EdgeModel,
  EdgeModelError,
  readManifest,
  type FleetSource,
  type LoadProgress,
  type ModelFileSystem,
  type ModelSource,
  type RunResult,
} from './src/edgepack';

export interface AppProps {
  /** edgepack.json (default: the one edgepack wrote next to this file). */
  manifest?: unknown;
  source?: ModelSource;
  /** Where a fleet's files come from, when edgepack.json lists specialists. */
  fleetSource?: FleetSource;
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

export default function App({
  manifest = manifestJson, source = MODEL_SOURCE, fleetSource = FLEET_SOURCE, fileSystem,
}: AppProps) {
  const parsed = useMemo(() => {
    try {
      return { manifest: readManifest(manifest), error: null };
    } catch (error) {
      return { manifest: null, error: describeError(error) };
    }
  }, [manifest]);
  const specialists = parsed.manifest?.specialists ?? [];
  const [specialist, setSpecialist] = useState<string | null>(specialists[0]?.name ?? null);
  const [input, setInput] = useState('');
  const [instruction, setInstruction] = useState('');
  const [status, setStatus] = useState(parsed.error ?? 'Model not loaded yet');
  const [streamed, setStreamed] = useState('');
  const [result, setResult] = useState<RunResult | null>(null);
  const [running, setRunning] = useState(false);
  const model = useRef<EdgeModel | EdgeFleet | null>(null);

  useEffect(
    () => () => {
      void model.current?.release();
      model.current = null;
    },
    [],
  );

  // The contract runs answer under: the picked specialist's, else the model's.
  const contract = specialists.find((s) => s.name === specialist)?.contract ?? parsed.manifest?.contract;
  const labels = contract?.labels ?? [];
  const usesInstruction = contract?.prompt.template.includes('{instruction}') ?? false;

  const loadModel = async (): Promise<EdgeModel | EdgeFleet> => {
    if (model.current) return model.current;
    setStatus('Loading model…');
    const options = {
      manifest,
      fileSystem: fileSystem ?? createBlobUtilFileSystem(),
      onProgress: (progress: LoadProgress) => setStatus(describeProgress(progress)),
    };
    // No specialist to pick: one model.
    model.current = specialist === null
      ? await EdgeModel.load({ ...options, source })
      : await EdgeFleet.load({ ...options, source: fleetSource, specialist });
    return model.current;
  };

  const pick = (name: string) => {
    setSpecialist(name);
    setStreamed('');
    setResult(null);
  };

  const run = async () => {
    setRunning(true);
    setStreamed('');
    setResult(null);
    try {
      const loaded = await loadModel();
      if (loaded instanceof EdgeFleet && specialist !== null) {
        setStatus(`Applying ${specialist}…`);
        await loaded.use(specialist);
      }
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
      <Text style={styles.caption}>
        {specialists.length > 0
          ? `${QUANT} GGUF + ${specialists.length} LoRA specialists on llama.rn`
          : `${QUANT} GGUF on llama.rn`}
      </Text>
      {specialists.length > 0 && (
        <>
          <Text style={styles.heading}>Specialist</Text>
          <View style={styles.picker} testID="specialist-picker">
            {specialists.map(({ name }) => (
              <Pressable
                key={name}
                onPress={() => pick(name)}
                disabled={running}
                accessibilityRole="radio"
                accessibilityState={{ selected: name === specialist, disabled: running }}
                style={[styles.choice, name === specialist && styles.chosen]}
                testID={`specialist-${name}`}
              >
                <Text>{name}</Text>
              </Pressable>
            ))}
          </View>
        </>
      )}
      {labels.length > 0 && (
        <View style={styles.labels}>
          {labels.map((label, index) => (
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
  picker: { flexDirection: 'row', flexWrap: 'wrap', gap: 8 },
  choice: { borderWidth: 1, borderColor: '#99c', borderRadius: 16, paddingHorizontal: 12, paddingVertical: 6 },
  chosen: { backgroundColor: '#ccf' },
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
