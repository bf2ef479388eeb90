"""Decoding ahead: batches of items loaded by background threads while the engine runs (PIL's
decoding and resizing release the GIL), for fitting, evaluation and the detector alike."""
import os
import queue
import threading


def decoding_threads():
    """Threads that decode and resize images: half the CPUs this process may use, 2 to 16 (a
    16-core GPU host decodes with 8, so that the GPU is not input-bound)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 2
    return min(16, max(2, cpus // 2))


def prefetch_batches(items, load, batch_size, workers=None, lookahead=2):
    """Yield lists of ``load(item)`` results, batch by batch, loaded by background threads
    (``decoding_threads`` by default).

    PIL decoding and resizing release the GIL, so loading overlaps the backbone's forward pass.
    At most ``lookahead`` batches wait in memory.
    """
    from concurrent.futures import ThreadPoolExecutor
    workers = workers or decoding_threads()
    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    out = queue.Queue(maxsize=lookahead)
    stop = threading.Event()

    def producer(pool):
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                out.put(("ok", list(pool.map(load, chunk))))
        except BaseException as exc:  # forwarded to the consumer, re-raised there
            out.put(("error", exc))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        thread = threading.Thread(target=producer, args=(pool,), daemon=True)
        thread.start()
        try:
            for _ in chunks:
                kind, value = out.get()
                if kind == "error":
                    raise value
                yield value
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    out.get_nowait()
                except queue.Empty:
                    thread.join(0.05)
