"""Fetch the CED Weibo rumor dataset and convert it to mfjax's files.

Downloads the public GitHub repository thunlp/Chinese_Rumor_Dataset as a zip
(resuming a partial download), checks it (a readable zip holding the expected
CED_Dataset folders and file counts), reads its CED_Dataset folder and writes
`train.jsonl.gz`, `val.jsonl.gz` and `holdout.jsonl.gz` (split by sha256(eid) %
100: <80 train, <90 val, else holdout) in the converted-CED format that
`mfjax.data.load_events(..., format="ced")` reads, then verifies the counts.

  python tools/download_data.py --out data/ced            # download + convert
  python tools/download_data.py --raw path/to/CED_Dataset --out data/ced   # convert a local copy

Existing output files are not overwritten unless --force is given.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import urllib.request
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mfjax.data.events import LoadReport, load_events, split_of, write_jsonl  # noqa: E402

URL = "https://github.com/thunlp/Chinese_Rumor_Dataset/archive/refs/heads/master.zip"
EXPECTED = {"original-microblog": 3387, "rumor-repost": 1538, "non-rumor-repost": 1849}
SPLITS = ("train", "val", "holdout")


def download(url: str, dest: str, chunk: int = 1 << 20) -> str:
  """Download to `dest`, resuming from a partial `dest.part` with an HTTP Range request."""
  if os.path.exists(dest):
    return dest
  part = dest + ".part"
  have = os.path.getsize(part) if os.path.exists(part) else 0
  req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
  with urllib.request.urlopen(req, timeout=60) as resp:
    if have and resp.status != 206:  # server ignored the range: start over
      have = 0
    total = resp.headers.get("Content-Length")
    total = int(total) + have if total else None
    with open(part, "ab" if have else "wb") as f:
      done = have
      while True:
        block = resp.read(chunk)
        if not block:
          break
        f.write(block)
        done += len(block)
        print(f"\r[download] {done / 1e6:.1f} MB" + (f" / {total / 1e6:.1f} MB" if total else ""), end="",
              file=sys.stderr, flush=True)
  print(file=sys.stderr)
  os.replace(part, dest)
  return dest


def find_ced_folder(root: str) -> str:
  for dirpath, dirnames, _ in os.walk(root):
    if "original-microblog" in dirnames:
      return dirpath
  raise SystemExit(f"error: no CED_Dataset folder (with original-microblog/) under {root}")


def check_raw(folder: str, strict: bool = True) -> dict:
  """File counts per CED_Dataset subfolder; with `strict`, they must match the dataset's."""
  counts = {sub: len([f for f in os.listdir(os.path.join(folder, sub)) if f.endswith(".json")])
            if os.path.isdir(os.path.join(folder, sub)) else 0 for sub in EXPECTED}
  if strict and counts != EXPECTED:
    raise SystemExit(f"error: {folder} holds {counts}, expected {EXPECTED}; the download may be incomplete")
  return counts


def convert(raw_folder: str, out_dir: str, *, force: bool = False) -> dict:
  """Read a CED_Dataset folder and write the three split files. Returns counts."""
  os.makedirs(out_dir, exist_ok=True)
  targets = {s: os.path.join(out_dir, f"{s}.jsonl.gz") for s in SPLITS}
  existing = [p for p in targets.values() if os.path.exists(p)]
  if existing and not force:
    raise SystemExit(f"error: {existing} exist; pass --force to overwrite them")
  report = LoadReport()
  by_split = {s: [] for s in SPLITS}
  for event in load_events(raw_folder, format="ced-raw", report=report):
    by_split[split_of(event.eid)].append(event)
  counts = {}
  for s in SPLITS:
    events = sorted(by_split[s], key=lambda e: e.eid)
    write_jsonl(events, targets[s], as_ced=True)
    counts[s] = {"events": len(events), "actions": sum(len(e.actions) for e in events),
                 "rumor": sum(e.label == "rumor" for e in events)}
  counts["dropped_actions"] = report.skipped
  return counts


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", required=True, help="folder for train/val/holdout .jsonl.gz")
  ap.add_argument("--raw", help="a local CED_Dataset folder (skips the download)")
  ap.add_argument("--cache", default=os.path.expanduser("~/.cache/mfjax"), help="where the zip is kept")
  ap.add_argument("--url", default=URL)
  ap.add_argument("--force", action="store_true", help="overwrite existing output files")
  args = ap.parse_args(argv)

  if args.raw:
    folder = args.raw
    check_raw(folder, strict=False)
  else:
    os.makedirs(args.cache, exist_ok=True)
    zpath = download(args.url, os.path.join(args.cache, "Chinese_Rumor_Dataset.zip"))
    try:
      with zipfile.ZipFile(zpath) as z:
        bad = z.testzip()
        if bad:
          raise zipfile.BadZipFile(f"corrupt member {bad}")
        extract = os.path.join(args.cache, "extracted")
        if not os.path.isdir(extract):
          z.extractall(extract + ".tmp")
          shutil.move(extract + ".tmp", extract)
    except zipfile.BadZipFile as e:
      os.remove(zpath)
      raise SystemExit(f"error: {zpath} is not a valid zip ({e}); removed it, run again to re-download")
    folder = find_ced_folder(extract)
    check_raw(folder, strict=True)
  counts = convert(folder, args.out, force=args.force)
  for s in SPLITS:
    c = counts[s]
    print(f"{s}: {c['events']} events ({c['rumor']} rumor), {c['actions']} actions -> {args.out}/{s}.jsonl.gz")
  print(f"dropped {counts['dropped_actions']} actions with unparseable dates")


if __name__ == "__main__":
  main()
