// Worker side of CodecPool: compresses or decompresses batches of clusters.
// Messages are described in pool.ts (PoolRequest / PoolResponse).
/// <reference lib="deno.worker" />

import { type ClusterCodec, type CodecOptions, createCodec } from "./codecs.ts";
import type { PoolRequest, PoolResponse } from "./pool.ts";
import { runJob } from "./_job.ts";

const codecs = new Map<string, Promise<ClusterCodec>>();

function codecFor(options: CodecOptions): Promise<ClusterCodec> {
  const key = `${options.type}/${options.level}/${options.backend}`;
  let codec = codecs.get(key);
  if (!codec) {
    codec = createCodec(options);
    codecs.set(key, codec);
  }
  return codec;
}

self.onmessage = async (event: MessageEvent<PoolRequest>) => {
  const req = event.data;
  let res: PoolResponse;
  try {
    const codec = await codecFor(req.codec);
    const { data, lengths } = runJob(codec, req);
    res = { id: req.id, data, lengths };
    self.postMessage(res, [data.buffer as ArrayBuffer]);
  } catch (err) {
    const e = err as {
      message?: string;
      code?: string;
      name?: string;
      index?: number;
    };
    res = {
      id: req.id,
      error: {
        message: String(e?.message ?? err),
        code: e?.code,
        name: e?.name,
        index: e?.index,
      },
    };
    self.postMessage(res);
  }
};
