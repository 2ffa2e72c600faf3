"""The one error type for bad input: it always names what was wrong and where."""


class InputError(ValueError):
    """Bad user input (a file line, a field, a task/bucket pair). `where` is e.g. 'preds/trec.jsonl:17'."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem
