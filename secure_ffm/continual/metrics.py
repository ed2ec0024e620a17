"""The standard continual-learning metrics of an accuracy matrix (Lopez-Paz & Ranzato, NeurIPS 2017; Chaudhry et
al., ECCV 2018).

``A[i][j]`` is the accuracy on stage ``j``'s test set after training stage ``i`` (``j <= i``; later entries are
None). With ``T`` stages:

- average accuracy: ``1/T * sum_j A[T-1][j]``;
- forgetting: ``1/(T-1) * sum_{j<T-1} (max_{i<T-1} A[i][j] - A[T-1][j])``, the drop from the best accuracy a stage
  had before the last stage to its final one (0 when nothing is forgotten, negative when the last stage improved it);
- backward transfer: ``1/(T-1) * sum_{j<T-1} (A[T-1][j] - A[j][j])``: how training later stages changed earlier
  ones (negative: forgetting).

Forgetting and backward transfer are None with one stage.
"""

from __future__ import annotations

from collections.abc import Sequence


def check_matrix(matrix: Sequence[Sequence[float | None]]) -> None:
    """Raise ValueError unless row ``i`` holds ``i + 1`` numbers (stages 0..i), possibly padded with None."""
    for i, row in enumerate(matrix):
        seen = list(row[: i + 1])
        if len(seen) != i + 1 or any(value is None for value in seen):
            raise ValueError(f"row {i} of the accuracy matrix must give stages 0..{i}, got {list(row)}")
        if any(value is not None for value in row[i + 1 :]):
            raise ValueError(f"row {i} of the accuracy matrix has entries for stages not seen yet: {list(row)}")


def average_accuracy(matrix: Sequence[Sequence[float | None]]) -> float | None:
    if not matrix:
        return None
    check_matrix(matrix)
    last = [float(v) for v in matrix[-1][: len(matrix)]]  # type: ignore[arg-type]
    return sum(last) / len(last)


def forgetting(matrix: Sequence[Sequence[float | None]]) -> float | None:
    if len(matrix) < 2:
        return None
    check_matrix(matrix)
    final = len(matrix) - 1
    drops = [max(float(matrix[i][j]) for i in range(j, final)) - float(matrix[final][j]) for j in range(final)]  # type: ignore[arg-type]
    return sum(drops) / len(drops)


def backward_transfer(matrix: Sequence[Sequence[float | None]]) -> float | None:
    if len(matrix) < 2:
        return None
    check_matrix(matrix)
    final = len(matrix) - 1
    changes = [float(matrix[final][j]) - float(matrix[j][j]) for j in range(final)]  # type: ignore[arg-type]
    return sum(changes) / len(changes)


def square(matrix: Sequence[Sequence[float]], size: int) -> list[list[float | None]]:
    """The lower-triangular rows padded with None to ``size`` x ``size`` (rows of stages not reached: all None)."""
    rows: list[list[float | None]] = [[*row, *([None] * (size - len(row)))] for row in matrix]
    rows.extend([[None] * size for _ in range(size - len(rows))])
    return rows
