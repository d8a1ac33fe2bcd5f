"""Chemistry beyond the edge energy: phases, whiteline, energy calibration, uncertainty, quality.

One module per question a scientist asks of the per-pixel spectra:

- :mod:`.phases`: which chemically distinct regions are there (PCA, NMF, k-means over all
  particles together)?
- :mod:`.whiteline`: where is the whiteline and how high (a peak model fitted per pixel)?
- :mod:`.calibration`: by how much must the energy axis be shifted (a reference foil or
  standard with a known E0, or a region of known edge energy)?
- :mod:`.uncertainty`: how well is each pixel's edge energy (and its fractions) known, from
  the photon noise and from the registration, and which differences are resolved?
- :mod:`.quality`: which pixels have an edge jump and a normalisation fit worth trusting?

Every function takes arrays and returns arrays, tables or small frozen dataclasses; none
reads files, prints or plots.
"""
