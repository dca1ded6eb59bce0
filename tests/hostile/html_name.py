from tests.hostile._base import Uniform


class Markup(Uniform):
    name = "<script>alert(1)</script>html_name"
    authors = '<img src=x onerror="alert(2)">'
    description = "<b>bold</b> & <i>italic</i> <script>document.title='pwned'</script>"
