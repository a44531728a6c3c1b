from kchat_cli.main import cli

# Fixed prog_name so usage lines and the completion variable (_KCHAT_CLI_COMPLETE)
# are the same whether run as `kchat-cli` or `python -m kchat_cli`.
cli(prog_name="kchat-cli")
