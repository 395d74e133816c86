"""`python -m auditor` runs the same CLI as the `auditor` console script."""

from auditor.cli import main

if __name__ == "__main__":  # pragma: no cover - exercised through subprocess tests
    main()
