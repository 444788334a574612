"""Data with possible patient identifiers for the privacy tests (made up; the ID number's check
digit is right, so the detector takes it for a real one)."""

from __future__ import annotations

import json
from pathlib import Path

from medtui_engine.dataset.identifiers import _ID_CHECK, _ID_WEIGHTS


def id_number(base: str = "11010519491231002") -> str:
    total = sum(int(d) * w for d, w in zip(base, _ID_WEIGHTS, strict=True))
    return base + _ID_CHECK[total % 11]


ID_NUMBER = id_number()
PHONE = "13812345678"
EMAIL = "zhang.san@example.com"
NAME = "张三丰"
RECORD = "ZY2024001"
# each value, and what redaction writes in its place
VALUES = {ID_NUMBER: "[身份证号]", PHONE: "[手机号]", EMAIL: "[邮箱]", NAME: "[姓名]", RECORD: "[病历号]"}
ANSWER = "疑似诊断：急性下壁心肌梗死。诊断依据：ST段抬高。治疗方案：阿司匹林。"


def rows(n: int = 8) -> list[dict]:
    out = []
    for i in range(n):
        q = f"男性，{40 + i}岁，胸痛{i + 1}小时。"
        if i == 1:
            q += f"身份证号{ID_NUMBER}，"
        if i == 2:
            q += f"联系电话{PHONE}。"
        if i == 3:
            q += f"姓名：{NAME}，邮箱 {EMAIL}"
        cot = "考虑急性冠脉综合征。" + (f"住院号：{RECORD}，既往史不详。" if i == 4 else "")
        out.append({"Question": q, "Complex_CoT": cot, "Response": ANSWER, "Note": f"备注{i}" + (f" 电话{PHONE}" if i == 5 else "")})
    return out


def write_jsonl(path: Path, n: int = 8) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows(n)), encoding="utf-8")
    return path
