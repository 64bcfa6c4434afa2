import sys

from rupq.cli import main

if __name__ == "__main__":
    arguments = sys.argv[1:]
    # `python -m rupq --config …` predates the sub-commands: it means `train`.
    if arguments and arguments[0].startswith("-") and arguments[0] not in ("-h", "--help"):
        arguments = ["train", *arguments]
    main(arguments)
