from benchopt import BaseSolver


class Solver(BaseSolver):
    """stagelearn's learned transform coder, streamed as in staging.

    Frames arrive in time order, each as its subdomain blocks. The first frame travels raw
    (lossless, as before the first encoder) and trains the exact IncrementalPCA; every later
    block is coded with the current encoder (rate control to RMSE = rel_tol x range, an RMSE
    target, looser than the max-error bounds of ZFP and SZ3 at the same rel_tol; 1% raw tiles), and its raw tiles update the model, which is republished after every frame. Bytes
    include the raw first frame and every encoder (mean and components, float32).
    comm_bytes: what the exact merge would all-reduce across one rank per block:
    (d^2 + d + 1) x 8 bytes per rank per update.
    """

    name = "stagelearn-PCA"
    sampling_strategy = "run_once"
    parameters = {"rel_tol": [1e-2, 1e-3, 1e-4], "publish_every": [8]}

    def set_objective(self, frames, blocks):
        self.frames, self.blocks = frames, blocks

    def run(self, _):
        import time

        import numpy as np

        from stagelearn.analytics import IncrementalPCA, TransformCodec
        from stagelearn.analytics.codec import decode_block, encode_block, encode_raw_block
        from stagelearn.analytics.tiling import to_tiles

        ndim = self.frames.ndim - 1
        tile = (4, 4, 4) if ndim == 3 else (8, 8)
        d = int(np.prod(tile))
        est = IncrementalPCA()
        rec = np.empty_like(self.frames)
        n_bytes, tc, td, updates = 0, 0.0, 0.0, 0
        codec = None
        for t, frame in enumerate(self.frames):
            span = float(frame.max() - frame.min()) or 1.0
            target = (self.rel_tol * span) ** 2
            new_tiles = []
            for start, count in self.blocks:
                sel = tuple(slice(s, s + c) for s, c in zip(start, count))
                block = frame[sel]
                t0 = time.perf_counter()
                if codec is None:
                    payload = encode_raw_block(block)
                    new_tiles.append(to_tiles(block, tile))
                else:
                    eb = encode_block(block, codec, tile, raw_fraction=0.01, target_mse=target)
                    payload = eb.payload
                    new_tiles.append(eb.raw_tiles)
                t1 = time.perf_counter()
                rec[t][sel], _, _ = decode_block(payload, codec)
                td += time.perf_counter() - t1
                tc += t1 - t0
                n_bytes += len(payload)
            t0 = time.perf_counter()
            for tiles in new_tiles:
                est.partial_fit(tiles.astype(np.float64))
                updates += 1
            if codec is None or t % self.publish_every == 0:
                codec = TransformCodec(est.mean_, est.components_, 1.0)
                n_bytes += 4 * (est.mean_.size + est.components_.size)  # the encoder pushed back
            tc += time.perf_counter() - t0
        self.result = dict(reconstruction=rec, n_bytes=n_bytes, compress_s=tc, decompress_s=td,
                           comm_bytes=updates * (d * d + d + 1) * 8)

    def get_result(self):
        return self.result
