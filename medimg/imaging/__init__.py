"""Files to pixels: format sniffing, raster and DICOM decoding (the DICOM display pipeline), the input contract."""
