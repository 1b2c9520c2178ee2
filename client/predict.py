"""Score a CSV with a running service: rows in, one answer per row out.

    python -m client data/breast-cancer.csv                       # writes data/breast-cancer.predictions.csv
    python -m client rows.csv --url http://host:3000 --output answers.csv --concurrency 8

Input: a CSV with the 30 feature columns, read as training reads it (training/dataset.py): headers
spelt as in the public WDBC file (`concave points_mean`) or as in the project's (`concave_points_mean`),
an empty trailing column and any other column without data ignored, `id` kept to name the rows, and
every other column (`diagnosis`, ...) ignored. Cells are sent as numbers when they are finite numbers
and as they are written otherwise, so the service names what is wrong with them.

Sending: POST /predict_batch, at most --batch-size rows (1000, the service's limit) a request,
--concurrency requests at a time. A 503 or 429 is retried after its Retry-After, and a failed
connection after a short pause, until --give-up-after seconds have passed for that batch. A batch
answered 422 because of some of its rows (fields like `instances[3].radius_mean`) is sent again
without them, and those rows are reported as refused. With a token (TOKEN_FILE or --token-file, else
TOKEN), every request carries `Authorization: Bearer <token>`; the file is read again for every
request, because a Kubernetes projected token is replaced before it expires.

Output: a CSV with one line per input row, in order: `id` (or `row`, the row's number from 1 when the
input has no id column), `diagnosis`, `probability_malignant`, `warnings` (joined with "; "), `reason`
(why a diagnosis is indeterminate) and `refused` (the fields the service refused, with its messages).
Answers are written as the service gave them: an indeterminate row has an empty probability. A
summary goes to stderr. Exit status: 0 when every row was answered, 1 when the service refused some
rows, 2 when the run could not be completed (unreadable input, a refused token, a service that keeps
failing).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import email.utils
import math
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from tqdm import tqdm

from training.dataset import ID_COLUMN, normalise_header
from wdbc import FEATURE_NAMES

DEFAULT_URL = "http://127.0.0.1:3000"
MAX_BATCH_ROWS = 1000  # the most rows the service takes in one /predict_batch
# The service names a problem of a batch row as instances[<index>].<feature> (or instances[<index>]).
ROW_FIELD = re.compile(r"instances\[(\d+)\](?:\.(.+))?")
LISTED_REFUSALS = 20  # rows listed in the summary; the output CSV has them all
EXIT_REFUSED, EXIT_FAILED = 1, 2


class ClientError(Exception):
    """The run cannot be completed; the message says why."""


@dataclass(frozen=True)
class Table:
    id_column: str  # "id", or "row" when the input has no id column
    ids: list[str]
    rows: list[dict[str, Any]]  # the 30 features of each row, in the model's order


@dataclass
class Results:
    """By row position in the table: the service's answer, or the (field, message) it refused."""

    answers: dict[int, dict[str, Any]] = field(default_factory=dict)
    refused: dict[int, list[tuple[str, str]]] = field(default_factory=dict)


def read_table(path: Path) -> Table:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
    except (OSError, UnicodeDecodeError, pd.errors.EmptyDataError, pd.errors.ParserError) as error:
        raise ClientError(f"{path}: {error}".strip()) from None
    frame.columns = [normalise_header(str(column)) for column in frame.columns]
    duplicated = sorted({column for column in frame.columns if list(frame.columns).count(column) > 1})
    if duplicated:
        raise ClientError(f"{path}: column(s) named twice: {', '.join(duplicated)}")
    # The public file's trailing comma makes an unnamed column with no data: ignore such columns.
    frame = frame.loc[
        :, [c for c in frame.columns if c in FEATURE_NAMES or frame[c].str.strip().ne("").any()]
    ]
    frame = frame.loc[frame.apply(lambda column: column.str.strip().ne("")).any(axis=1)]
    missing = [name for name in FEATURE_NAMES if name not in frame.columns]
    if missing:
        raise ClientError(f"{path}: missing column(s): {', '.join(missing)}")
    if frame.empty:
        raise ClientError(f"{path}: no data rows")
    if ID_COLUMN in frame.columns:
        id_column, ids = ID_COLUMN, frame[ID_COLUMN].str.strip().tolist()
    else:
        id_column, ids = "row", [str(number + 1) for number in range(len(frame))]
    features = frame[list(FEATURE_NAMES)].to_numpy().tolist()
    rows = [dict(zip(FEATURE_NAMES, map(cell, values), strict=True)) for values in features]
    return Table(id_column, ids, rows)


def cell(text: str) -> Any:
    """A finite number as a number; anything else as written (None when empty), for the service to refuse."""
    text = text.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    # float() also reads "1_000" and "inf", which are not numbers in a CSV (pandas and training agree).
    return number if math.isfinite(number) and "_" not in text else text


class Service:
    """POST /predict_batch with the token, retries and 422 handling described in the module docstring."""

    def __init__(
        self, client: httpx.AsyncClient, token_file: Path | None, token: str | None, patience: float
    ):
        self.client = client
        self.token_file = token_file
        self.token = token
        self.patience = patience

    def headers(self) -> dict[str, str]:
        token = self.token
        if self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()
            except OSError as error:
                raise ClientError(f"token file {self.token_file}: {error.strerror}") from None
            if not token:
                raise ClientError(f"token file {self.token_file} is empty")
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def post(self, rows: list[dict[str, Any]]) -> httpx.Response:
        """The service's answer to one batch, after waiting out 503s, 429s and failed connections."""
        deadline = time.monotonic() + self.patience
        pause = 0.5
        while True:
            try:
                response = await self.client.post(
                    "/predict_batch", json={"instances": rows}, headers=self.headers()
                )
            except httpx.TransportError as error:
                problem, wait = f"{type(error).__name__}: {error}", pause
                pause = min(pause * 2, 10)
            else:
                if response.status_code not in (429, 503):
                    return response
                problem, wait = f"HTTP {response.status_code}: {error_text(response)}", retry_after(response)
            if time.monotonic() + wait > deadline:
                raise ClientError(
                    f"{self.client.base_url}: still failing after {self.patience:g} s ({problem})"
                )
            await asyncio.sleep(wait)

    async def score(self, positions: list[int], rows: list[dict[str, Any]], results: Results) -> None:
        """Answers for the rows at `positions`; rows the service refuses are recorded and left out."""
        pending = list(positions)
        while pending:
            response = await self.post([rows[position] for position in pending])
            if response.status_code == 200:
                try:
                    predictions = response.json()["predictions"]
                except (ValueError, KeyError, TypeError):
                    raise ClientError(f"POST /predict_batch: not an answer: {response.text[:300]}") from None
                if len(predictions) != len(pending):
                    raise ClientError(f"{len(pending)} rows sent, {len(predictions)} predictions received")
                results.answers.update(zip(pending, predictions, strict=True))
                return
            refused = refused_rows(response) if response.status_code == 422 else {}
            if not refused or max(refused) >= len(pending):
                hint = " (a token is read from TOKEN_FILE or TOKEN)" if response.status_code == 401 else ""
                raise ClientError(
                    f"POST /predict_batch: HTTP {response.status_code}: {error_text(response)}{hint}"
                )
            for index, problems in refused.items():
                results.refused.setdefault(pending[index], []).extend(problems)
            pending = [position for index, position in enumerate(pending) if index not in refused]


def refused_rows(response: httpx.Response) -> dict[int, list[tuple[str, str]]]:
    """The batch rows a 422 names, by index in the batch, with each problem's feature and message."""
    try:
        detail = response.json().get("detail") or []
    except ValueError:
        return {}
    refused: dict[int, list[tuple[str, str]]] = {}
    for entry in detail:
        match = ROW_FIELD.fullmatch(str(entry.get("field", "")))
        if match:
            refused.setdefault(int(match[1]), []).append((match[2] or "row", str(entry.get("message", ""))))
    return refused


def error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        problems = "; ".join(
            f"{item.get('field')}: {item.get('message')}" for item in body.get("detail") or []
        )
        return f"{body.get('error')}" + (f" ({problems})" if problems else "")
    except (ValueError, AttributeError):
        return response.text[:300]


def retry_after(response: httpx.Response) -> float:
    """Retry-After in seconds (a number or an HTTP date); 1 s when absent or unreadable."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, (email.utils.parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return 1.0


async def score_table(
    table: Table,
    url: str,
    *,
    batch_size: int = MAX_BATCH_ROWS,
    concurrency: int = 4,
    token_file: Path | None = None,
    token: str | None = None,
    patience: float = 120,
    timeout: float = 60,
    progress: bool | None = None,
) -> Results:
    results = Results()
    batches = [
        list(range(start, min(start + batch_size, len(table.rows))))
        for start in range(0, len(table.rows), batch_size)
    ]
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with tqdm(total=len(table.rows), unit="row", disable=None if progress is None else not progress) as bar:
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
            service = Service(client, token_file, token, patience)

            async def send(positions: list[int]) -> None:
                async with slots:
                    await service.score(positions, table.rows, results)
                bar.update(len(positions))

            try:
                async with asyncio.TaskGroup() as group:
                    for positions in batches:
                        group.create_task(send(positions))
            # A plain except, not except*: Python before 3.11.4 wraps what except* raises in a group.
            except ExceptionGroup as failures:
                errors = failures.subgroup(ClientError)
                if errors is None:
                    raise
                error = errors.exceptions[0]
                while isinstance(error, ExceptionGroup):
                    error = error.exceptions[0]
                raise error from None
    return results


def write_answers(path: Path, table: Table, results: Results) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            [table.id_column, "diagnosis", "probability_malignant", "warnings", "reason", "refused"]
        )
        for position, row_id in enumerate(table.ids):
            answer = results.answers.get(position)
            if answer is None:
                problems = "; ".join(
                    f"{name}: {message}" for name, message in results.refused.get(position, [])
                )
                writer.writerow([row_id, "", "", "", "", problems])
                continue
            probability = answer.get("probability_malignant")
            writer.writerow(
                [
                    row_id,
                    answer.get("diagnosis", ""),
                    "" if probability is None else repr(probability),
                    "; ".join(str(warning) for warning in answer.get("warnings") or []),
                    answer.get("reason") or "",
                    "",
                ]
            )


def summary(table: Table, results: Results, seconds: float, output: Path) -> list[str]:
    diagnoses = Counter(answer.get("diagnosis") for answer in results.answers.values())
    models = sorted({str(answer.get("model_tag")) for answer in results.answers.values()})
    counts = ", ".join(f"{count} {diagnosis}" for diagnosis, count in diagnoses.most_common())
    rate = f"{len(table.rows) / seconds:,.0f} rows/s"
    answered = f"{counts or 'no answers'}, {len(results.refused)} refused"
    lines = [
        f"{len(table.rows)} rows in {seconds:.2f} s ({rate}): {answered}; model {', '.join(models) or 'none'}",
        f"wrote {output}",
    ]
    if results.refused:
        lines.append(f"refused rows (the service's reasons; every one is in {output}, column refused):")
        for position in sorted(results.refused)[:LISTED_REFUSALS]:
            name = f"row {position + 1}" + (
                f" (id {table.ids[position]})" if table.id_column == ID_COLUMN else ""
            )
            for feature, message in results.refused[position]:
                lines.append(f"  {name}: {feature}: {message}")
        if len(results.refused) > LISTED_REFUSALS:
            lines.append(f"  ... and {len(results.refused) - LISTED_REFUSALS} more rows")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", type=Path, help="the CSV to score")
    parser.add_argument("--output", type=Path, help="default: the input's name with .predictions.csv")
    parser.add_argument(
        "--url",
        default=os.environ.get("SERVICE_URL", DEFAULT_URL),
        help="the service (default: $SERVICE_URL, else %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=MAX_BATCH_ROWS, help="rows a request, 1-1000 (default %(default)s)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="requests at a time (default %(default)s)")
    parser.add_argument(
        "--token-file",
        type=Path,
        default=os.environ.get("TOKEN_FILE") or None,
        help="a bearer token, read again for every request (default: $TOKEN_FILE; else $TOKEN is sent, if set)",
    )
    parser.add_argument(
        "--give-up-after",
        type=float,
        default=120,
        help="seconds to keep retrying one batch (default %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=60, help="seconds to wait for one answer (default %(default)s)"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it is shown on a terminal)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= MAX_BATCH_ROWS:
        parser.error(f"--batch-size must be from 1 to {MAX_BATCH_ROWS}")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = args.output or args.input.with_name(f"{args.input.stem}.predictions.csv")
    started = time.monotonic()
    try:
        table = read_table(args.input)
        results = asyncio.run(
            score_table(
                table,
                args.url,
                batch_size=args.batch_size,
                concurrency=args.concurrency,
                token_file=args.token_file,
                token=os.environ.get("TOKEN") or None,
                patience=args.give_up_after,
                timeout=args.timeout,
                progress=False if args.no_progress else None,
            )
        )
        write_answers(output, table, results)
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:
        print(f"error: {output}: {error.strerror}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(summary(table, results, time.monotonic() - started, output)), file=sys.stderr)
    return EXIT_REFUSED if results.refused else 0
