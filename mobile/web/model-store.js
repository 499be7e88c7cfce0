// Fetching model files with progress, checking them against edgepack.json, keeping them in the browser.
//
// Every byte is checked against the sha256 edgepack.json lists (Web Crypto) before it is used or
// stored. Verified files go into the Cache API under a key that contains their hash, so a rebuilt
// model can never be served from a stale entry, and a cached entry is used only when its size and
// recorded hash match the manifest again.
//
// Why the verified bytes are handed on as a blob read back from the Cache API, not as `new Blob([bytes])`:
// Chromium keeps a page's in-memory blobs within about 500 MB in all (measured: a 500 MB blob, or the
// third of three 200 MB blobs, cannot be read: NotReadableError), and wllama reads the model from its
// blobs while it loads. A blob from the cache is backed by the browser's disk cache and has no such
// limit (three 700 MB files read back here). The body goes to the cache as a stream of slices: a put
// of one in-memory body over ~500 MB fails the same way.

export const CACHE_NAME = "edgepack-models-v1";
const HASH_HEADER = "x-edgepack-sha256";
const PUT_SLICE_BYTES = 16 * 1024 * 1024;

export class IntegrityError extends Error {
  constructor(url, expected, actual) {
    super(`${url}: sha256 ${actual} does not match edgepack.json (${expected}); the file is corrupt or stale`);
    this.name = "IntegrityError";
  }
}

/** Lowercase hex sha256 of bytes (Web Crypto; needs a secure context: https or localhost). */
export async function sha256Hex(bytes) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) {
    throw new Error(
      "Web Crypto is unavailable: the page is not a secure context. Serve the bundle over https or from " +
        "localhost / 127.0.0.1 (edgepack serve does), so model files can be verified.",
    );
  }
  const digest = await subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function cacheKey(url, sha256) {
  const key = new URL(url);
  key.searchParams.set("edgepack-sha256", sha256);
  return key.href;
}

async function openCache(cacheName) {
  try {
    return globalThis.caches ? await globalThis.caches.open(cacheName) : null;
  } catch {
    return null; // e.g. storage disabled: work uncached rather than fail
  }
}

/** Read a response body into one buffer of the expected size, reporting progress as it arrives. */
async function readBody(response, url, expectedBytes, onProgress) {
  const buffer = new Uint8Array(expectedBytes);
  let offset = 0;
  const reader = response.body.getReader();
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    if (offset + value.length > expectedBytes) {
      await reader.cancel();
      throw new IntegrityError(url, `${expectedBytes} bytes`, `more than ${expectedBytes} bytes`);
    }
    buffer.set(value, offset);
    offset += value.length;
    onProgress?.(offset);
  }
  if (offset !== expectedBytes) {
    throw new IntegrityError(url, `${expectedBytes} bytes`, `${offset} bytes`);
  }
  return buffer;
}

/**
 * Return {blob, fromCache} for one file of the bundle, verified against {sha256, bytes}.
 *
 * onProgress(loadedBytes) is called as bytes arrive (once, with the full size, for a cache hit).
 */
export async function fetchVerified(url, { sha256, bytes }, { onProgress, useCache = true, signal } = {}) {
  const cache = useCache ? await openCache(CACHE_NAME) : null;
  const key = cacheKey(url, sha256);
  if (cache) {
    const blob = await cachedBlob(cache, key, sha256, bytes);
    if (blob) {
      onProgress?.(bytes);
      return { blob, fromCache: true };
    }
    await cache.delete(key);
  }
  const response = await fetch(url, { signal, cache: "no-cache" });
  if (!response.ok) {
    throw new Error(`${url}: HTTP ${response.status} ${response.statusText}`);
  }
  const buffer = await readBody(response, url, bytes, onProgress);
  const actual = await sha256Hex(buffer);
  if (actual !== sha256) {
    throw new IntegrityError(url, sha256, actual);
  }
  if (cache) {
    try {
      const blob = await storeInCache(cache, key, buffer, sha256);
      if (blob) return { blob, fromCache: false };
    } catch (err) {
      console.warn(`edgepack: could not cache ${url} (${err?.name ?? err}); it will be downloaded again next time`);
    }
  }
  return { blob: await inMemoryBlob(url, buffer), fromCache: false };
}

/** A response body that hands `bytes` over in slices (copies), so no single in-memory body is large. */
function slicedBody(bytes) {
  let offset = 0;
  return new ReadableStream({
    pull(controller) {
      if (offset >= bytes.length) {
        controller.close();
        return;
      }
      controller.enqueue(bytes.slice(offset, offset + PUT_SLICE_BYTES));
      offset += PUT_SLICE_BYTES;
    },
  });
}

/** The cached entry's blob (disk-backed) when it records this hash and has this size, else null. */
async function cachedBlob(cache, key, sha256, bytes) {
  const hit = await cache.match(key);
  if (!hit || hit.headers.get(HASH_HEADER) !== sha256) return null;
  const blob = await hit.blob();
  return blob.size === bytes ? blob : null;
}

/** Put verified bytes into the cache and return the cached copy's blob (disk-backed), or null. */
async function storeInCache(cache, key, buffer, sha256) {
  const headers = { "content-type": "application/octet-stream", [HASH_HEADER]: sha256 };
  await cache.put(key, new Response(slicedBody(buffer), { headers }));
  return cachedBlob(cache, key, sha256, buffer.length);
}

/**
 * Without a cache (storage blocked, private browsing, quota) the bytes stay in memory: fine for a
 * small model; past the browser's in-memory blob limit say so here, not as wllama's read error.
 */
async function inMemoryBlob(url, buffer) {
  const blob = new Blob([buffer], { type: "application/octet-stream" });
  try {
    await blob.slice(blob.size - 1).arrayBuffer();
  } catch (err) {
    throw new Error(
      `${url}: the browser cannot keep this ${Math.round(buffer.length / 1e6)} MB model file in memory ` +
        `(${err?.name ?? err}) and could not store it in the Cache API. Allow this site to store data ` +
        "(not a private window, storage not blocked, enough free disk) or build a smaller model or quantization.",
    );
  }
  return blob;
}

/** Remove every cached model file of this origin (e.g. from a "clear downloads" button). */
export async function clearModelCache() {
  return globalThis.caches ? globalThis.caches.delete(CACHE_NAME) : false;
}
