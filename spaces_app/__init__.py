"""mergebot's Gradio UI: the Space app, its API client, and the offline demo.

Modules: ``app`` (the Blocks UI, ``build_app``), ``client`` (the bot's REST API),
``preflight`` (header-only check), ``render`` (Markdown), ``hub`` (whoami, model cards),
``examples`` (ready recipes), ``mount`` (serving inside ``mergebot serve``), ``demo``
(offline demo), ``stage`` (the folder deployed to a Space). Imports nothing at package
import, so ``python -m spaces_app.demo`` can set the Hub's environment first.
"""
