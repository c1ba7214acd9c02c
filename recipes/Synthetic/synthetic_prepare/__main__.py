"""``python -m recipes.Synthetic.synthetic_prepare``: prepares the corpus."""

from recipes.Synthetic.synthetic_prepare.prepare import main

main()
