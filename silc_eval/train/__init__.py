"""The training core: recipes, objectives, data, loop and checkpoint export."""
