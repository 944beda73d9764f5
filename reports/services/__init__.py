"""Every write of the reports app: transitions (the only writers of ``status``), intake of
uploads, PDFs, and the synchronisation from the PACS."""
