"""ADIOS2 XML configurations shipped with stagelearn (package data)."""
