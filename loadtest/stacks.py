"""Where the time goes: py-spy's raw (collapsed) stacks → cost per stage and per function.

    .venv/bin/py-spy record --pid <gateway pid> --rate 400 --duration 15 --format raw -o memory.txt
    .venv/bin/python loadtest/stacks.py memory.txt --us-per-req 160

Each sample is charged to the innermost frame that names a stage (STAGES, checked from the
leaf up), so the stages add up to 100% of the samples taken while the process was on a CPU.
Given the process's CPU time per request (bench.py prints it as us/req), shares become µs per
request. `bench.py --profile DIR` records and prints this for each gateway target.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# (label, pattern on "function (file)"), innermost match wins. Order among matches in one
# stack does not matter: the frame nearest the leaf decides.
STAGES: Sequence[tuple[str, str]] = (
    ("gateway: read + parse form", r"^parse_form |^_json_params "),
    ("gateway: tenant lookup", r"^_find_tenant "),
    ("gateway: rebuild public URL", r"^PublicUrl\.rebuild "),
    ("gateway: verify signature", r"^verify_form |^verify_json |^algorithm_from_settings "),
    ("gateway: rate limit (acquire)", r"^(FailoverLimiter|MemoryBuckets|RedisBuckets)\.acquire|^Coalescer\.submit "),
    ("gateway: limiter background (coalescer, redis-py)", r"^Coalescer\.|redis/|^RedisBuckets\._"),
    ("gateway: route + TwiML response", r"^route \(gateway/policy/tenant|^twiml \(gateway/responses"),
    ("gateway: request record, masking", r"^Exchange\.|^mask_number |^line \(gateway/telemetry/accesslog"),
    ("gateway: access log line", r"^JsonAccessLogger\."),
    ("gateway: handler, other", r"^webhook\.<locals>\.handle |^_pipeline |^_first "),
    ("aiohttp: read request body", r"^(BaseRequest|Request)\.(read|post|text) |^StreamReader\.(read|readany)"),
    ("aiohttp: write response", r"^(StreamResponse|Response)\.|^StreamWriter\.|^RequestHandler\.finish_response "),
    ("aiohttp: router + request object", r"^Application\._(handle|make_request) |^UrlDispatcher\.|web_request\.py"),
    (
        "aiohttp: parse HTTP, feed body",
        r"^RequestHandler\.data_received |^HttpRequestParser|http_parser|^StreamReader\.feed",
    ),
    ("aiohttp: per-request task + handler loop", r"^RequestHandler\.(start|_handle_request) "),
    ("policy watch, heartbeats", r"^watch |^snapshot |InstanceRegistry"),
    ("event loop + sockets (uvloop, C)", r"^run_app |^run_until_complete |^run_forever |uvloop"),
)


@dataclass(frozen=True, slots=True)
class Profile:
    samples: int
    stages: Counter[str]
    self_time: Counter[str]
    inclusive: Counter[str]


FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """`func (path/to/file.py:12)` → `func (path/to/file.py)`: lines of one function merged."""
    match = FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{match['func']} ({match['file']})"


def read_raw(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    stacks = []
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        stacks.append(([frame_name(f) for f in stack.split(";") if f.strip()], int(count)))
    return stacks


def analyse(stacks: Sequence[tuple[list[str], int]], stages: Sequence[tuple[str, str]] = STAGES) -> Profile:
    compiled = [(label, re.compile(pattern)) for label, pattern in stages]
    by_stage: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        total += count
        if frames:
            self_time[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
        label = "other"
        for frame in reversed(frames):
            found = next((lab for lab, pattern in compiled if pattern.search(frame)), None)
            if found is not None:
                label = found
                break
        by_stage[label] += count
    return Profile(total, by_stage, self_time, inclusive)


def report(profile: Profile, us_per_req: float | None, top: int = 15) -> str:
    def cost(samples: int) -> str:
        share = samples / max(1, profile.samples)
        text = f"{100 * share:5.1f}%"
        if us_per_req is not None:
            text += f"  {share * us_per_req:6.1f} us/req"
        return text

    lines = [f"{profile.samples} samples" + (f", {us_per_req:.1f} us of CPU per request" if us_per_req else "")]
    lines.append("by stage (innermost matching frame):")
    lines += [f"  {cost(n)}  {label}" for label, n in profile.stages.most_common()]
    lines.append(f"top {top} functions by self time:")
    lines += [f"  {cost(n)}  {name}" for name, n in profile.self_time.most_common(top)]
    lines.append(f"top {top} gateway functions by inclusive time:")
    gateway = [(name, n) for name, n in profile.inclusive.most_common() if "gateway/" in name]
    lines += [f"  {cost(n)}  {name}" for name, n in gateway[:top]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("raw", type=Path, help="py-spy record --format raw output")
    parser.add_argument("--us-per-req", type=float, help="CPU µs per request of the profiled process")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    profile = analyse(read_raw(args.raw.read_text().splitlines()))
    print(report(profile, args.us_per_req, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
