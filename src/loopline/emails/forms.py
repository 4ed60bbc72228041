from __future__ import annotations

from django import forms

from .models import Email


class EmailForm(forms.ModelForm):
    class Meta:
        model = Email
        fields = ["name", "purpose", "subject", "sender", "from_name", "from_email", "from_user", "reply_to",
                  "body_format", "body", "text_body", "campaign"]
        widgets = {"body": forms.Textarea(attrs={"rows": 18, "class": "code", "spellcheck": "false"}),
                   "text_body": forms.Textarea(attrs={"rows": 6})}
        labels = {"from_name": "From name", "from_email": "From address", "body_format": "Written in",
                  "text_body": "Text version (optional)"}

    def __init__(self, *args, bu=None, **kwargs):
        super().__init__(*args, **kwargs)
        from loopline.accounts.models import User
        from loopline.campaigns.models import Campaign

        self.fields["from_user"].queryset = User.objects.filter(memberships__bu=bu).order_by("email")
        self.fields["from_user"].required = False
        self.fields["campaign"].queryset = Campaign.objects.filter(bu=bu)
        self.fields["campaign"].required = False
        self.fields["body"].help_text = (
            "Merge fields: {{ prospect.first_name|default('there', true) }}, {{ account.name }}, {{ user.full_name }}, "
            "{{ bu.name }}, {% if prospect.company %}…{% endif %}, {{ dynamic('key') }}. Marketing email needs "
            "{{ unsubscribe_url }} and {{ preferences_url }}.")


class ListSendForm(forms.Form):
    include = forms.MultipleChoiceField(label="Send to lists", widget=forms.CheckboxSelectMultiple)
    exclude = forms.MultipleChoiceField(label="Suppression lists (never send to)", required=False,
                                        widget=forms.CheckboxSelectMultiple)
    scheduled_at = forms.DateTimeField(label="Send at (UTC, empty: now)", required=False,
                                       widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))

    def __init__(self, *args, lists=(), **kwargs):
        super().__init__(*args, **kwargs)
        choices = [(str(pl.pk), f"{pl.name} ({pl.member_count})") for pl in lists]
        self.fields["include"].choices = choices
        self.fields["exclude"].choices = choices


class OneToOneForm(forms.Form):
    """A 1:1 email: a template, or a subject and a message written here (merge fields allowed)."""

    template = forms.ModelChoiceField(queryset=Email.objects.none(), required=False, label="Start from an email",
                                      empty_label="Write my own message")
    subject = forms.CharField(max_length=300, required=False,
                              help_text="With a template, leave empty to keep the template's subject.")
    message = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 10}),
                              help_text="Plain text; a blank line starts a paragraph. Merge fields such as "
                                        "{{ prospect.first_name }} work. Unsubscribe and preference links are added.")
    key = forms.CharField(widget=forms.HiddenInput, required=False, max_length=64)

    def __init__(self, *args, templates=None, **kwargs):
        super().__init__(*args, **kwargs)
        if templates is not None:
            self.fields["template"].queryset = templates


class DynamicContentForm(forms.Form):
    name = forms.CharField(max_length=120)
    key = forms.SlugField(max_length=60, help_text='Used in emails as {{ dynamic("key") }}.')
    field = forms.ChoiceField(label="Chosen by prospect field")
    default_html = forms.CharField(required=False, label="Default (when no variation matches)",
                                   widget=forms.Textarea(attrs={"rows": 4, "class": "code"}))

    def __init__(self, *args, fields=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["field"].choices = [(f, f) for f in fields]


class VariationForm(forms.Form):
    value = forms.CharField(max_length=200, required=False, label="When the field is")
    html = forms.CharField(required=False, label="Show (HTML)", widget=forms.Textarea(attrs={"rows": 3,
                                                                                             "class": "code"}))


VariationFormSet = forms.formset_factory(VariationForm, extra=2, max_num=100)
