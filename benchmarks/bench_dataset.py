"""Benchmark: validate and measure a generated 20,000-record (~60 MB) Chinese data set.

``medtui bench dataset`` calls ``run_dataset_bench``. The file is synthetic (random clinical-sounding
phrases in the seed's Question / Complex_CoT / Response shape, answers with the expected sections, a
few planted problems so every check does real work); it is written once, then validated with the demo
model's real Qwen tokenizer and the seed template, as ``medtui validate`` would. Prints the numbers.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

_AGES = range(18, 90)
_COMPLAINTS = ["右上腹痛", "发热伴咳嗽", "胸闷气短", "进行性吞咽困难", "反复头痛", "双下肢水肿", "腹泻",
               "皮肤黄染", "心悸", "关节肿痛", "尿频尿急", "咯血", "意识障碍", "腰背痛", "乏力纳差"]
_FINDINGS = ["体温38.6℃", "血压150/95mmHg", "心率112次/分", "墨菲征阳性", "双肺可闻及湿啰音", "肝区叩痛",
             "TBil 68μmol/L", "WBC 15.2×10^9/L", "CRP 86mg/L", "血红蛋白82g/L", "尿蛋白(++)", "肌酐168μmol/L",
             "胃镜示食管中段溃疡型肿物", "CT示胰头占位", "超声示胆囊结石", "心电图示ST段抬高", "D-二聚体升高"]
_REASONING = ["结合患者的年龄和病史，首先考虑", "需要注意的是，该表现也可见于", "实验室检查提示炎症反应明显，",
              "影像学表现支持这一判断，", "但仍需排除其他可能，例如", "从病理生理角度分析，", "因此下一步应完善",
              "综合以上信息，", "患者的症状与体征相符，", "考虑到并发症的风险，"]
_DIAGNOSES = ["急性胆囊炎", "社区获得性肺炎", "急性冠脉综合征", "食管癌", "偏头痛", "肾病综合征", "急性胃肠炎",
              "梗阻性黄疸", "心房颤动", "类风湿关节炎", "急性膀胱炎", "支气管扩张", "肝性脑病", "腰椎间盘突出",
              "Castleman病", "IgG4相关疾病"]
_TREATMENTS = ["抗感染治疗", "补液及纠正电解质紊乱", "手术评估", "对症止痛", "营养支持", "抗凝治疗", "利尿消肿",
               "内镜下治疗", "定期复查肝功能", "多学科会诊"]


def _para(rng: random.Random, pool: list[str], target: int) -> str:
    out: list[str] = []
    size = 0
    while size < target:
        piece = rng.choice(pool) + rng.choice(_FINDINGS + _DIAGNOSES) + rng.choice(["，", "。", "；"])
        out.append(piece)
        size += len(piece)
    return "".join(out)


def make_record(rng: random.Random, i: int) -> dict[str, str]:
    sex = rng.choice(["男性", "女性"])
    question = (f"{sex}，{rng.choice(_AGES)}岁，{rng.choice(_COMPLAINTS)}{rng.randint(1, 30)}天，"
                + "，".join(rng.sample(_FINDINGS, 4)) + "。" + _para(rng, _COMPLAINTS, 100) + f"（病例{i}）")
    diag = rng.choice(_DIAGNOSES)
    cot = _para(rng, _REASONING, 640)
    response = (f"疑似诊断：{diag}\n诊断依据：\n1. {_para(rng, _FINDINGS, 50)}\n2. {_para(rng, _FINDINGS, 50)}\n"
                f"3. {_para(rng, _FINDINGS, 50)}\n鉴别诊断：\n1. {rng.choice(_DIAGNOSES)}\n2. {rng.choice(_DIAGNOSES)}\n"
                f"治疗方案：{'，'.join(rng.sample(_TREATMENTS, 3))}。{_para(rng, _TREATMENTS, 60)}\n"
                f"随访建议：{rng.randint(1, 4)}周后复查。")
    return {"Question": question, "Complex_CoT": cot, "Response": response, "id": f"case-{i:06d}",
            "specialty": rng.choice(["消化内科", "呼吸内科", "心内科", "肾内科", "肿瘤科"])}


def write_bench_file(path: Path, records: int = 20000, seed: int = 0) -> Path:
    """The synthetic JSONL file (written to a temp name, renamed when complete)."""
    rng = random.Random(seed)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as fh:
        for i in range(1, records + 1):
            rec = make_record(rng, i)
            if i % 997 == 0:  # a few planted problems, so the report has findings to build
                rec["Question"] = rec["Question"] + " 联系电话13812345678"
            if i % 1499 == 0:
                rec["Response"] = ""
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def run_dataset_bench(out_dir: Path | None, records: int = 20000) -> dict:
    """Generate, then validate + measure; print and return the numbers (and write them as JSON to out_dir)."""
    from medtui_engine.dataset.measure import load_tokenizer
    from medtui_engine.dataset.validate import validate_file
    from medtui_engine.demo import ensure_demo_model

    work = Path(tempfile.mkdtemp(prefix="medtui-bench-dataset-"))
    try:
        t = time.perf_counter()
        data = write_bench_file(work / f"bench_{records}.jsonl", records)
        gen_s = time.perf_counter() - t
        model = ensure_demo_model()
        stages: dict[str, float] = {}
        last = {"stage": "", "t": time.perf_counter()}

        def progress(stage: str, done: int, total: int) -> None:
            now = time.perf_counter()
            if stage != last["stage"]:
                last["stage"], last["t"] = stage, now
            stages[stage] = round(now - last["t"], 2)

        t = time.perf_counter()
        load_tokenizer(model)  # cold: includes importing transformers, as the first validation pays
        tok_s = time.perf_counter() - t
        t = time.perf_counter()
        report = validate_file(data, model=model, template="seed", max_seq_length=8192, progress=progress)
        validate_s = time.perf_counter() - t
        m = report.measurement
        result = {
            "records": records,
            "file_mb": round(data.stat().st_size / 1e6, 1),
            "cpu_count": os.cpu_count(),
            "generate_s": round(gen_s, 2),
            "tokenizer_load_s": round(tok_s, 2),
            "validate_and_measure_s": round(validate_s, 2),
            "total_s": round(tok_s + validate_s, 2),
            "stages_s": stages,
            "target_s": 30.0,
            "rows_usable": len(report.dataset.cases),
            "findings": dict(report.by_kind()),
            "tokens_total": m.total_tokens if m else 0,
            "tokens_p50": m.p50 if m else 0,
            "tokens_p95": m.p95 if m else 0,
            "tokens_max": m.max if m else 0,
            "tokens_per_s": round(m.total_tokens / validate_s) if m and validate_s else 0,
            "summary": report.summary,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"dataset bench: {result['records']} records, {result['file_mb']} MB, {result['cpu_count']} CPU(s)")
    print(f"  tokenizer load (cold)    {result['tokenizer_load_s']:7.2f} s")
    print(f"  validate + measure       {result['validate_and_measure_s']:7.2f} s  (stages: {result['stages_s']})")
    print(f"  total                    {result['total_s']:7.2f} s  (target <= {result['target_s']:.0f} s)")
    print(f"  tokens {result['tokens_total']:,} (p50 {result['tokens_p50']}, p95 {result['tokens_p95']}, "
          f"max {result['tokens_max']}); {result['tokens_per_s']:,} tokens/s")
    print(f"  {result['summary']}")
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "bench_dataset.json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n",
                                                    encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> int:
    """``medtui bench dataset [OUT_DIR] [--records N]`` (also ``python -m benchmarks.bench_dataset``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="medtui bench dataset",
                                     description="validate + measure a generated Chinese data set; prints the times")
    parser.add_argument("out_dir", nargs="?", type=Path, help="also write bench_dataset.json here")
    parser.add_argument("--records", type=int, default=20000, help="rows to generate (default %(default)s)")
    args = parser.parse_args(argv)
    if args.records < 1:
        parser.error("--records must be at least 1")
    run_dataset_bench(args.out_dir, args.records)
    return 0


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: the repo root on the path
    sys.exit(main())
