from __future__ import annotations

import asyncpg
from litestar.testing import AsyncTestClient

from labeval.app import create_app
from labeval.config import Settings


async def _seed(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """
            INSERT INTO product_categories (category_code, name) VALUES ('TEX', '纺织服装');
            INSERT INTO labs (lab_code, name, province) VALUES ('L1', '甲检验院', '江苏'), ('L2', '乙检验院', '浙江');
            INSERT INTO lab_scopes VALUES ('L1', 'TEX');
            INSERT INTO grading_runs (as_of, trigger, policy_name, policy_version, policy_hash, policy, finished_at,
                                      status)
            VALUES ('2026-01-31', 'test', 'default', '1', 'abc', '{}', now(), 'succeeded'),
                   ('2026-02-28', 'test', 'default', '1', 'abc', '{}', now(), 'succeeded');
            INSERT INTO lab_grades (run_id, lab_code, score, class, previous_class, change, pairs, reasons)
            VALUES (1, 'L1', 91.5, 'I', NULL, 'new', 12, '[]'),
                   (2, 'L1', 72.0, 'III', 'I', 'down', 30, '[{"rule": "fdr_excess", "metric": "fdr_q_excess", "value": 0.01, "threshold": 0.05, "effect": "cap III"}]');
            """
        )
    finally:
        await conn.close()


async def test_health_ready_and_labs(db_url: str, app_settings: Settings, role_headers: dict) -> None:
    await _seed(db_url)
    app = create_app(app_settings)
    async with AsyncTestClient(app) as client:
        client.headers.update(role_headers["officer"])
        assert (await client.get("/health")).json() == {"status": "ok"}
        ready = await client.get("/ready")
        assert ready.status_code == 200 and ready.json()["database"] == "ok"

        labs = (await client.get("/api/v1/labs")).json()["items"]
        assert [(lab["code"], lab["current_class"], lab["score"], lab["last_run"]) for lab in labs] == [
            ("L1", "III", 72.0, 2),
            ("L2", None, None, None),
        ]
        detail = (await client.get("/api/v1/labs/L1")).json()
        assert detail["scopes"] == ["TEX"]
        assert [h["class"] for h in detail["history"]] == ["III", "I"]
        assert detail["history"][0]["reasons"][0]["rule"] == "fdr_excess"

        missing = await client.get("/api/v1/labs/NOPE")
        assert missing.status_code == 404
        schema = await client.get("/schema/openapi.json")
        assert "/api/v1/labs" in schema.json()["paths"]
