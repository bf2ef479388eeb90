"""TIPC serving client: send every image of a folder to the service, compare each answer with
infer.py's result for the same image (its regions/<stem>.json), and say so in one line.

    python test_tipc/serving_client.py --port 18765 --category brick \
        --image_dir IMAGES --reference OUTPUT_OF_INFER_PY
"""
import argparse
import http.client
import json
import os
import sys

IMAGES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--category", type=str, required=True)
    p.add_argument("--image_dir", type=str, required=True)
    p.add_argument("--reference", type=str, required=True,
                   help="infer.py's --save_path (regions/<stem>.json per image)")
    args = p.parse_args()
    files = sorted(f for f in os.listdir(args.image_dir) if f.lower().endswith(IMAGES))
    bad = []
    for name in files:
        with open(os.path.join(args.image_dir, name), "rb") as fh:
            data = fh.read()
        conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=60)
        conn.request("POST", f"/predict?category={args.category}", data,
                     {"Content-Type": "application/octet-stream"})
        r = conn.getresponse()
        body = json.loads(r.read())
        conn.close()
        stem = os.path.splitext(name)[0]
        with open(os.path.join(args.reference, "regions", f"{stem}.json")) as fh:
            ref = json.load(fh)
        same = r.status == 200 and abs(body["score"] - ref["score"]) <= 1e-4 * abs(ref["score"]) \
            and body["verdict"] == ref["verdict"] and body["regions"] == ref["regions"]
        print(f"{name}: HTTP {r.status}, score {body.get('score')}, {body.get('verdict')}, "
              f"{body.get('n_regions')} region(s) ({'= infer.py' if same else 'DIFFERS'})")
        if not same:
            bad.append(name)
    if bad or not files:
        print(f"serving client: {len(bad)} of {len(files)} answers differ from infer.py's")
        return 1
    print(f"serving client: all {len(files)} answers equal infer.py's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
