"""Result files compared image by image: loading and alignment, paired statistics,
the comparison value, its exports, and a study's seeds x images results."""
